"""thresholds.json: what `anomflow calibrate` exports and `anomflow run --thresholds` reads.

    {"format": "anomflow-thresholds", "version": 1, "method": "saa", "config": {...}, "models": [{name,
     weights_sha256, ...}], "stand_in_models": bool, "dataset": {kind, root, split, categories},
     "decision": "fail when score > threshold", "score": str, "target_frr": float,
     "artifact": {"store", "stage", "key"}, "calibration_run": str, "calibration_report": str, "created": str,
     "categories": {category: {"threshold", "rule", "n_good", "n_anomalous", "empirical_frr", "f1", "item"}},
     "skipped": {category: reason}, "notes": [str]}
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from flows.cli.preflight import UsageError
from tasks.decisions.thresholds import RULES, CategoryThreshold

FORMAT, VERSION = "anomflow-thresholds", 1


@dataclass(frozen=True)
class Thresholds:
    """A loaded thresholds file: per-category thresholds and what they were calibrated with."""

    path: str
    method: str
    config: dict[str, Any]
    models: list[dict[str, Any]]
    target_frr: float | None
    categories: dict[str, CategoryThreshold] = field(default_factory=dict)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _category(name: str, entry: Any) -> CategoryThreshold:
    """One ``categories`` entry; ValueError naming the field."""
    if not isinstance(entry, dict):
        raise ValueError(f"category {name!r}: expected an object, got {type(entry).__name__}")
    if not _number(entry.get("threshold")):
        raise ValueError(f"category {name!r}: threshold {entry.get('threshold')!r} is not a finite number")
    if entry.get("rule") not in RULES:
        raise ValueError(f"category {name!r}: rule {entry.get('rule')!r} is not one of {', '.join(RULES)}")
    for count in ("n_good", "n_anomalous"):
        if not isinstance(entry.get(count), int) or isinstance(entry.get(count), bool) or entry[count] < 0:
            raise ValueError(f"category {name!r}: {count} {entry.get(count)!r} is not a count")
    if not _number(entry.get("empirical_frr")) or not 0.0 <= entry["empirical_frr"] <= 1.0:
        raise ValueError(f"category {name!r}: empirical_frr {entry.get('empirical_frr')!r} is not a share")
    f1 = entry.get("f1")
    if f1 is not None and not _number(f1):
        raise ValueError(f"category {name!r}: f1 {f1!r} is not a number")
    return CategoryThreshold(float(entry["threshold"]), entry["rule"], entry["n_good"], entry["n_anomalous"],
                             float(entry["empirical_frr"]), None if f1 is None else float(f1))


def parse_thresholds(path: str, payload: Any) -> Thresholds:
    """Check a decoded thresholds file; ValueError naming the field and the reason."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ValueError(f"not an anomflow thresholds file (format {payload.get('format')!r} version "
                         f"{payload.get('version')!r}; expected {FORMAT!r} version {VERSION}); write one with "
                         "`anomflow calibrate`")
    if not isinstance(payload.get("method"), str) or not payload["method"]:
        raise ValueError("method is missing")
    for name, kind in (("config", dict), ("models", list), ("categories", dict)):
        if not isinstance(payload.get(name), kind):
            raise ValueError(f"{name} must be a JSON {'object' if kind is dict else 'array'}")
    target = payload.get("target_frr")
    if target is not None and (not _number(target) or not 0.0 <= target < 1.0):
        raise ValueError(f"target_frr {target!r} is not a share in [0, 1)")
    if not payload["categories"]:
        raise ValueError("no category has a threshold")
    categories = {name: _category(name, entry) for name, entry in payload["categories"].items()}
    return Thresholds(path, payload["method"], payload["config"], payload["models"], target, categories)


def load_thresholds(path: str, method: str | None = None) -> Thresholds:
    """Read and check ``path`` (and, given ``method``, that it was calibrated for it).

    Raises UsageError ``--thresholds PATH: reason`` for a missing, unreadable or malformed file, or another
    method's."""
    try:
        with open(path, encoding="utf-8") as fh:
            payload = json.load(fh)
        loaded = parse_thresholds(path, payload)
    except OSError as exc:
        raise UsageError(f"--thresholds {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:   # json.JSONDecodeError is a ValueError
        raise UsageError(f"--thresholds {path}: {' '.join(str(exc).split())}") from None
    if method is not None and loaded.method != method:
        raise UsageError(f"--thresholds {path}: calibrated for method {loaded.method!r}, not {method!r}; "
                         f"calibrate {method} with `anomflow calibrate {method} ...`")
    return loaded


def write_thresholds(path: str, payload: dict[str, Any]) -> None:
    """Write atomically (a temporary name, then rename); the payload is checked as a reader would check it."""
    parse_thresholds(path, payload)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)
