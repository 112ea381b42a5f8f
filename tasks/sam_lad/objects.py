"""SAM-LAD's object area filter: per-category tables (YAML, like SAA+'s expert tables) and their calibration.

A table::

    version: 1
    default: {min_area_fraction: 0.001, max_area_fraction: 0.5, expected_objects: null}
    whole_image: [carpet, ...]           # categories whose single object is the whole image (MVTec textures)
    categories:
      breakfast_box: {min_area_fraction: 0.005, max_area_fraction: 0.35, expected_objects: 6}

Fractions are of the image area. ``calibrate_bounds`` picks the bounds from normal images' SAM mask areas so
that as many normal images as possible yield exactly the expected object count (METHODS.md §4.3).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

TABLES = Path(__file__).resolve().parent / "object_areas"
BUILTIN = {"loco": "loco.yaml", "mvtec": "mvtec.yaml", "digitanatomy": "digitanatomy.yaml"}


class ObjectTableError(ValueError):
    """An object area table that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class AreaRule:
    """Keep SAM masks whose area / image area lies in [min_fraction, max_fraction]; whole_image: one object,
    the whole frame (SAM is not run)."""

    min_fraction: float = 0.0
    max_fraction: float = 1.0
    expected_objects: int | None = None
    whole_image: bool = False

    def as_params(self) -> dict:
        return {"min_area_fraction": self.min_fraction, "max_area_fraction": self.max_fraction,
                "whole_image": self.whole_image}


def is_synthetic(root: str) -> bool:
    """anomflow's synthetic writers leave a marker file in each category folder (or the root): their object
    table applies."""
    from tasks.datasets.generated import MARKER
    if os.path.exists(os.path.join(root, MARKER)):
        return True
    try:
        return any(os.path.exists(os.path.join(root, name, MARKER)) for name in os.listdir(root))
    except OSError:
        return False


def table_path(choice: str, dataset_kind: str, synthetic: bool = False) -> Path | None:
    """auto -> the built-in table of the dataset kind (the synthetic table for anomflow's synthetic sets); none ->
    no table (keep every mask); anything else is a path."""
    if choice == "none":
        return None
    if choice != "auto":
        return Path(os.path.expanduser(choice))
    if synthetic:
        return TABLES / "synthetic.yaml"
    return TABLES / BUILTIN[dataset_kind] if dataset_kind in BUILTIN else TABLES / "synthetic.yaml"


def _rule(entry: object, where: str, whole: bool) -> AreaRule:
    if not isinstance(entry, dict):
        raise ObjectTableError(f"{where}: expected a mapping with min_area_fraction / max_area_fraction")
    unknown = set(entry) - {"min_area_fraction", "max_area_fraction", "expected_objects"}
    if unknown:
        raise ObjectTableError(f"{where}: unknown key(s) {sorted(unknown)}")
    lo, hi = float(entry.get("min_area_fraction", 0.0)), float(entry.get("max_area_fraction", 1.0))
    if not 0.0 <= lo <= hi <= 1.0:
        raise ObjectTableError(f"{where}: need 0 <= min_area_fraction <= max_area_fraction <= 1, got {lo}, {hi}")
    n = entry.get("expected_objects")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ObjectTableError(f"{where}: expected_objects must be a positive integer or null, got {n!r}")
    return AreaRule(lo, hi, n, whole)


def load_table(path: Path | None) -> dict[str, AreaRule]:
    """{category: rule}, with the key ``"*"`` for the default. No table: keep every mask."""
    if path is None:
        return {"*": AreaRule()}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ObjectTableError(f"object area table {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ObjectTableError(f"object area table {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ObjectTableError(f"object area table {path}: expected a mapping with version: 1")
    whole = set(data.get("whole_image") or [])
    table = {"*": _rule(data.get("default", {}), f"{path}: default", False)}
    for name, entry in (data.get("categories") or {}).items():
        table[str(name)] = _rule(entry, f"{path}: categories.{name}", name in whole)
    for name in whole - set(table):
        table[name] = AreaRule(0.0, 1.0, 1, True)
    return table


def rule_for(table: dict[str, AreaRule], category: str) -> AreaRule:
    return table.get(category, table["*"])


def kept_objects(areas: np.ndarray, min_fraction: float, max_fraction: float, max_objects: int) -> np.ndarray:
    """The area filter (METHODS.md §4.3): areas M float (fractions of the image) -> indices (ascending, int64) of
    the masks inside [min_fraction, max_fraction], the ``max_objects`` largest if more (ties: lower index)."""
    areas = np.asarray(areas, np.float64).reshape(-1)
    inside = np.nonzero((areas >= min_fraction) & (areas <= max_fraction))[0]
    largest = inside[np.argsort(-areas[inside], kind="stable")][:max_objects]
    return np.sort(largest).astype(np.int64)


def calibrate_bounds(areas_per_image: list[np.ndarray], expected: int) -> tuple[AreaRule, float]:
    """Bounds [lo, hi] on area fractions (each image: its masks' fractions) that give ``expected`` objects on the
    largest share of images; ties prefer the widest margin to the nearest excluded masks. Returns (rule, share)."""
    if expected < 1:
        raise ValueError("expected object count must be >= 1")
    values = np.unique(np.concatenate([np.asarray(a, np.float64) for a in areas_per_image] or [np.zeros(0)]))
    if len(values) == 0:
        return AreaRule(0.0, 1.0, expected), 0.0
    # candidate bounds: midpoints (geometric) between neighbouring observed areas, plus the extremes
    # (arithmetic next to a zero area, whose geometric midpoint would be 0 and never exclude it)
    mids = np.where(values[:-1] > 0, np.sqrt(values[:-1] * values[1:]), values[1:] / 2) if len(values) > 1 \
        else np.zeros(0)
    lows = np.concatenate([[0.0], mids])
    highs = np.concatenate([mids, [1.0]])
    best, best_key = (0.0, 1.0), (-1.0, -np.inf)
    counts_lo = [np.searchsorted(np.sort(a), lows, side="left") for a in areas_per_image]    # masks < lo
    for j, hi in enumerate(highs):
        hits = np.zeros(len(lows))
        for a, below in zip(areas_per_image, counts_lo):
            upto = np.searchsorted(np.sort(a), hi, side="right")                              # masks <= hi
            hits += (upto - below) == expected
        valid = lows <= hi
        share = np.where(valid, hits / max(1, len(areas_per_image)), -1.0)
        i = int(np.argmax(share))
        margin = np.log(hi + 1e-12) - np.log(lows[i] + 1e-12)
        if (share[i], margin) > best_key:
            best_key, best = (float(share[i]), margin), (float(lows[i]), float(hi))
    return AreaRule(best[0], best[1], expected), best_key[0]


def write_table(path: str, rules: dict[str, AreaRule], note: str) -> None:
    """A table in the format :func:`load_table` reads (categories only; the default keeps every mask)."""
    data = {"version": 1, "default": {"min_area_fraction": 0.0, "max_area_fraction": 1.0, "expected_objects": None},
            "categories": {c: {"min_area_fraction": round(r.min_fraction, 6),
                               "max_area_fraction": round(r.max_fraction, 6),
                               "expected_objects": r.expected_objects} for c, r in sorted(rules.items())}}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(f"# {line}\n" for line in note.splitlines()))
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, path)
