"""report.json: the stable, documented record of one run (schema in README, "report.json")."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from tasks import metrics as metrics_mod
from tasks.engine.runner import StageStats
from tasks.report.evaluate import CategoryResult

SCHEMA_VERSION = 1
METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "image_auroc", "image_ap", "image_f1_max")
METRIC_DEFINITIONS = {
    "pixel_auroc": "ROC AUC over every pixel of the category (ties enter together; equal to sklearn's)",
    "pixel_ap": "average precision over every pixel of the category (sklearn's step definition)",
    "pixel_f1_max": "maximum F1 over all thresholds on every pixel of the category",
    "pixel_aupro": "MVTec AD's AUPRO: exact per-region-overlap curve (8-connected ground-truth components per "
                   "image, each weighted equally) against the FPR of normal pixels, trapezoid area on FPR "
                   "[0, 0.3] with the curve interpolated at 0.3, divided by 0.3",
    "image_auroc": "ROC AUC of the image scores (score = the map's maximum)",
    "image_ap": "average precision of the image scores",
    "image_f1_max": "maximum F1 over all thresholds of the image scores",
}
TINY_WARNING = ("made with tiny-* seeded random-weight stand-ins or --random-weights: "
                "maps and metrics say nothing about the method")


def metric_keys(per_category: dict[str, dict]) -> list[str]:
    """The reported metrics: MVTec AD's fixed set, or (MVTec LOCO) the keys the evaluation produced, in order."""
    found = list(dict.fromkeys(k for values in per_category.values() for k in values))
    if not found or any(k in METRIC_KEYS for k in found):
        return list(METRIC_KEYS)
    return found


def loco_definitions(keys: list[str]) -> dict[str, str]:
    others = [k for k in keys if k not in METRIC_DEFINITIONS]
    if not others:
        return {}
    from tasks.report.loco_evaluation_stage import metric_definition
    return {k: metric_definition(k) for k in others}


def detail_text(detail: dict[str, int] | None) -> str:
    """A stage's counts beyond images, e.g. ' (boxes decoded 17, boxes from memo 2117)'; '' when it has none."""
    counts = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in (detail or {}).items())
    return f" ({counts})" if counts else ""


def build_report(method: str, config: dict, models: list[dict], dataset: dict, categories: list[CategoryResult],
                 failures: dict[str, str], stages: list[StageStats], wall_seconds: float, run_id: str,
                 model_load_seconds: dict[str, float], notes: list[str] | None = None,
                 timings: dict[str, float] | None = None, executor: dict | None = None) -> dict:
    """executor: where the stage batches ran ({"kind": "dask", address, workers, ...}); None = this process."""
    per_cat = {c.category: c.metrics for c in categories if c.metrics is not None}
    keys = metric_keys(per_cat)
    metrics: dict[str, Any] = {k: {m: v.get(m) for m in keys} for k, v in per_cat.items()}
    mean_covers: dict[str, list[str]] = {}
    if per_cat:
        metrics["mean"] = {m: metrics_mod.mean_metrics(per_cat).get(m) for m in keys}
        # a metric undefined for a category (e.g. AUROC without anomalous images) leaves it out of that mean
        mean_covers = {m: sorted(c for c, v in per_cat.items() if v.get(m) is not None) for m in keys}
    all_failures = dict(failures)
    for c in categories:
        all_failures.update(c.failures)
    stand_in = any(m.get("tiny") or m.get("random_weights") for m in models)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": method,
        "config": config,
        "models": models,
        "stand_in_models": stand_in,
        "warning": TINY_WARNING if stand_in else None,
        "notes": list(notes or []),
        "dataset": dataset,
        "metrics": metrics,
        "mean_covers": mean_covers,
        "metric_definitions": {k: v for k, v in {**METRIC_DEFINITIONS, **loco_definitions(keys)}.items() if k in keys},
        "images": [img for c in categories for img in c.images],
        "failures": [{"path": p, "reason": r} for p, r in sorted(all_failures.items())],
        "stages": [{"name": s.name, "computed": s.computed, "reused": s.reused, "failed": s.failed,
                    "seconds": round(s.seconds, 3), **({"detail": s.detail} if s.detail else {})}
                   for s in stages],
        "wall_seconds": round(wall_seconds, 3),
        "timings": dict(timings or {}),
        "executor": executor or {"kind": "local"},
        "model_load_seconds": model_load_seconds,
    }


def write_json_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, allow_nan=False, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
