"""Per-category score summaries: recorded in every run's record, read back as the drift bounds of a later run.

A finished run's record in the store index (``stores.runs``) carries ``score_summary``:
``{"version": 1, "method": str, "categories": {category: {"n": int, "mean": float, "median": float,
"std": float | None}}}`` over the run's finite image scores (std with ddof = 1, as pandas and GX compute it;
None below two scores). ``--baseline RUN_ID`` bounds this run's statistics by the baseline's (``drift_bounds``).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from stores.runs import session

SUMMARY_VERSION = 1
# Drift bounds around a baseline statistic s of one category (scores of one method on one line):
#   mean, median  within s ± (DRIFT_STD_FACTOR × baseline std + DRIFT_ABS)
#   std           within [std / DRIFT_STD_RATIO - DRIFT_ABS, std × DRIFT_STD_RATIO + DRIFT_ABS]
DRIFT_STD_FACTOR = 0.5
DRIFT_STD_RATIO = 2.0
DRIFT_ABS = 0.02


class BaselineError(ValueError):
    """A baseline run that cannot bound this run: unknown, or without a score summary."""


def score_summary(method: str, images: list[dict]) -> dict[str, Any]:
    """The summary of report.json ``images`` entries ({category, score, ...}), finite scores only."""
    by_category: dict[str, list[float]] = {}
    for image in images:
        by_category.setdefault(image["category"], []).append(float(image["score"]))
    categories = {}
    for category, values in sorted(by_category.items()):
        scores = np.array([v for v in values if math.isfinite(v)], np.float64)
        if not scores.size:
            continue
        categories[category] = {"n": int(scores.size), "mean": float(scores.mean()),
                                "median": statistics.median(scores.tolist()),   # np.median imports numpy.ma
                                "std": float(scores.std(ddof=1)) if scores.size > 1 else None}
    return {"version": SUMMARY_VERSION, "method": method, "categories": categories}


def record_summary(run_id: str, summary: dict[str, Any]) -> None:
    """Put the summary into this run's record (kept when the run is marked complete)."""
    run = session(run_id)
    if run is not None:
        run.update(score_summary=summary)


def baseline_summary(store, run_id: str) -> dict[str, Any]:
    """The score summary recorded by run ``run_id`` in ``store`` (an ``ArtifactStore``), or BaselineError."""
    try:
        info = store.run_info(run_id)
    except KeyError:
        known = sorted((r for r in store.index.runs() if "score_summary" in r.record),
                       key=lambda r: r.updated or 0.0)[-3:]
        hint = f"; recent runs with summaries: {', '.join(r.run_id for r in known)}" if known else \
            "; no run in this store has one yet"
        raise BaselineError(f"--baseline {run_id}: no such run in store {store.url}{hint}") from None
    summary = info.record.get("score_summary")
    if not summary or summary.get("version") != SUMMARY_VERSION:
        raise BaselineError(f"--baseline {run_id}: the run has no score summary (status {info.status}; only runs "
                            "that finished their report record one)")
    return summary


def drift_bounds(stats: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{statistic: (low, high)} for one category's baseline statistics (module constants)."""
    std = stats.get("std")
    spread = DRIFT_STD_FACTOR * (std or 0.0) + DRIFT_ABS
    bounds = {name: (stats[name] - spread, stats[name] + spread) for name in ("mean", "median")}
    if std is not None:
        bounds["std"] = (max(0.0, std / DRIFT_STD_RATIO - DRIFT_ABS), std * DRIFT_STD_RATIO + DRIFT_ABS)
    return bounds
