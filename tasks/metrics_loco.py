"""MVTec LOCO AD metrics per category, as MVTec's official ``mvtec_loco_ad_evaluation`` defines them:
image AUROC and AUsPRO, each for {good + logical_anomalies} and {good + structural_anomalies}, and
their mean. The sPRO curve machinery (official threshold refinement, streaming) is in
``tasks.metrics_loco_curve``; this module assembles the report.

Official behaviour kept here (``evaluate_experiment.py``): the thresholds are refined once on all
images together, then each kind's curve is read at those thresholds over its own images plus every
good image (FPR) and over its own channels only (sPRO); the mean is 0.5 x (logical + structural).
The image score is the maximum of the map. The image AUROC is sklearn's ``roc_auc_score``; the
official script computes its own ROC, which equals sklearn's except when a good and an anomalous image
have exactly the same score (it steps through tied images one at a time, good ones first, instead of
counting a tie as half), so that value is reported too, as ``image_auroc_official_script``.

Undefined metrics are ``None`` with the reason under ``undefined``: no good image (the official script
requires a ``good`` folder), no image of the kind, or no defect-free pixel. Peak memory: see
``tasks.metrics_loco_curve`` (one image at a time; O(thresholds) per kind; one score per image).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.metrics_loco_curve import (ANOMALY_KINDS, KINDS, DefectChannel, ImageSource, KindTotals,
                                      LocoImage, MapPasses, RefinedCurve, StartSet, curve_of,
                                      refine_thresholds, refinement_candidates, refinement_queries,
                                      saturation_area, spro_curve_at, start_thresholds, totals_at)

__all__ = ["DefectChannel", "LocoImage", "KindTotals", "MapPasses", "RefinedCurve", "StartSet",
           "auc_spro", "curve_of", "evaluate_loco_category", "official_script_image_auroc",
           "refine_thresholds", "refinement_candidates", "refinement_queries", "saturation_area",
           "spro_curve_at", "start_thresholds", "totals_at"]

SHORT = {"logical_anomalies": "logical", "structural_anomalies": "structural"}
DEFAULT_MAX_FPRS = (0.05, 0.1, 0.3, 1.0)


def auc_spro(fpr: Sequence[float], spro: Sequence[float], max_fpr: float) -> float:
    """Area under sPRO(FPR) from FPR 0 to ``max_fpr``, divided by ``max_fpr`` (official ``util.trapz``).

    fpr, spro: T floats in threshold order (descending thresholds, so FPR non-decreasing); ``fpr[0]``
    must be 0 (the official start point) and ``max_fpr`` in (0, fpr[-1]]. Points with equal FPR add
    no area but keep their order: when ``max_fpr`` is not a curve FPR, the end point's sPRO is
    interpolated between the last point below it and the first point above it.
    """
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(spro, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"fpr and spro must be 1-D of equal length >= 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fpr and spro must be finite")
    if (np.diff(x) < 0).any():
        raise ValueError("fpr must be non-decreasing (points in descending threshold order)")
    if x[0] != 0:
        raise ValueError(f"the curve must start at FPR 0 (the official start point), got {x[0]}")
    if not 0 < max_fpr <= x[-1]:
        raise ValueError(f"max_fpr must be in (0, {x[-1]}] (the curve's FPR range), got {max_fpr}")
    correction = 0.0
    if max_fpr not in x:
        above = int(np.searchsorted(x, max_fpr, side="right"))
        x0, x1, y0, y1 = x[above - 1], x[above], y[above - 1], y[above]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        correction = 0.5 * (y_end + y0) * (max_fpr - x0)
    kept = x <= max_fpr
    x, y = x[kept], y[kept]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / max_fpr)


def official_script_image_auroc(good_scores: Sequence[float], anomalous_scores: Sequence[float]) -> float:
    """Image AUROC by the official script's ROC construction (``util.compute_classification_roc``).

    good_scores: G floats, anomalous_scores: A floats (G, A >= 1). Scores are ranked ascending with
    good images first among equal scores; starting from (FPR 1, TPR 1), images are removed one by one
    and a point is recorded after the first image of each new score value and after the last image;
    the area is the trapezoid over those points. Equals ``roc_auc_score`` when no good score equals an
    anomalous one.
    """
    good = np.asarray(good_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64)
    if good.size == 0 or anomalous.size == 0:
        raise ValueError("the image AUROC needs at least one good and one anomalous image")
    scores = np.concatenate([good, anomalous])
    is_anomalous = np.concatenate([np.zeros(good.size, bool), np.ones(anomalous.size, bool)])
    order = np.lexsort((is_anomalous, scores))          # by score, then good before anomalous
    scores, is_anomalous = scores[order], is_anomalous[order]
    left_good = good.size - np.cumsum(~is_anomalous)    # still above the cut after each removal
    left_anomalous = anomalous.size - np.cumsum(is_anomalous)
    recorded = np.ones(scores.size, bool)
    recorded[1:] = scores[1:] != scores[:-1]
    recorded[-1] = True
    fpr = np.concatenate([[1.0], left_good[recorded] / good.size])[::-1]
    tpr = np.concatenate([[1.0], left_anomalous[recorded] / anomalous.size])[::-1]
    return float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * (fpr[1:] - fpr[:-1])))


def _downsample(fpr: np.ndarray, spro: np.ndarray, thresholds: np.ndarray, max_points: int) -> dict:
    """At most ``max_points`` curve points (evenly spaced along the curve, both ends kept), as lists."""
    keep = np.arange(fpr.size)
    if fpr.size > max_points:
        keep = np.unique(np.round(np.linspace(0, fpr.size - 1, max_points)).astype(int))
    return {"fpr": fpr[keep].tolist(), "spro": spro[keep].tolist(), "threshold": thresholds[keep].tolist()}


def _kind_reason(counts: dict[str, int], kind: str) -> str | None:
    if counts["good"] == 0:
        return "no good images (both the image AUROC and the FPR need them)"
    if counts[kind] == 0:
        return f"no {kind} images"
    return None


def evaluate_loco_category(images: ImageSource, max_fprs: Sequence[float] = DEFAULT_MAX_FPRS,
                           curve_max_distance: float = 0.01, area_condition: bool = True,
                           max_curve_points: int = 256, max_sampled_scores: int = 10_000_000,
                           seed: int = 0) -> dict:
    """Image AUROC and AUsPRO of one LOCO category, JSON-serialisable.

    images: a list of :class:`LocoImage`, or a zero-argument callable returning a fresh iterable of
    them (maps are then read one at a time, at most 12 times with the official settings). max_fprs:
    AUsPRO integration limits in (0, 1]. curve_max_distance: the refinement's target spacing of the
    all-images (sPRO, FPR) curve. area_condition: the script version 2.0 refinement rule (False: the
    rule of older copies). max_curve_points: points kept per returned curve. seed: the start set's
    subsample draw (used only above ``max_sampled_scores`` scores).

    Returns ``{"image_auroc": {"logical", "structural", "mean"}, "image_auroc_official_script": {...},
    "auspro": {"<max_fpr>": {"logical", "structural", "mean"}}, "undefined": {"<metric path>": reason},
    "counts": {"images": {kind: n}, "channels": {kind: n}}, "thresholds": {"count", "passes_over_maps",
    "refinement_steps", "converged", "max_adjacent_distance", "curve_max_distance",
    "sampled_scores"}, "curves": {"logical"|"structural": {"fpr", "spro", "threshold"} or None}}``.
    """
    limits = [float(m) for m in max_fprs]
    if not limits or any(not 0 < m <= 1 for m in limits):
        raise ValueError(f"max_fprs must be a non-empty list of values in (0, 1], got {list(max_fprs)}")
    if max_curve_points < 2:
        raise ValueError(f"max_curve_points must be >= 2 (a curve's two ends), got {max_curve_points}")
    passes = MapPasses(images)
    start = start_thresholds(passes, max_sampled_scores=max_sampled_scores, seed=seed)
    counts = {kind: len(start.scores[kind]) for kind in KINDS}
    undefined: dict[str, str] = {}
    report: dict = {"image_auroc": {}, "image_auroc_official_script": {},
                    "auspro": {str(m): {} for m in limits}, "undefined": undefined, "curves": {}}

    from sklearn.metrics import roc_auc_score   # imported here: it costs about a second of start-up
    for kind in ANOMALY_KINDS:
        name, reason = SHORT[kind], _kind_reason(counts, kind)
        if reason is not None:
            for key in ("image_auroc", "image_auroc_official_script"):
                report[key][name] = None
                undefined[f"{key}.{name}"] = reason
            continue
        good, anomalous = start.scores["good"], start.scores[kind]
        labels = [0] * len(good) + [1] * len(anomalous)
        report["image_auroc"][name] = float(roc_auc_score(labels, good + anomalous))
        report["image_auroc_official_script"][name] = official_script_image_auroc(good, anomalous)

    refined: RefinedCurve | None = None
    if counts["good"] > 0 and counts["logical_anomalies"] + counts["structural_anomalies"] > 0:
        refined = refine_thresholds(passes, start.thresholds, curve_max_distance, area_condition)
    for kind in ANOMALY_KINDS:
        name, reason = SHORT[kind], _kind_reason(counts, kind)
        curve = None
        if reason is None:
            assert refined is not None
            try:
                fpr, spro = curve_of(refined.totals, ("good", kind))
            except ValueError as exc:
                reason = str(exc)
            else:
                curve = (fpr, spro)
        report["curves"][name] = None if curve is None else _downsample(*curve, refined.thresholds,
                                                                         max_curve_points)
        for limit in limits:
            value = None if curve is None else auc_spro(*curve, limit)
            report["auspro"][str(limit)][name] = value
            if curve is None:
                undefined[f"auspro.{limit}.{name}"] = reason

    tables = [("image_auroc", report["image_auroc"]),
              ("image_auroc_official_script", report["image_auroc_official_script"]),
              *((f"auspro.{m}", report["auspro"][str(m)]) for m in limits)]
    for key, table in tables:
        if table["logical"] is None or table["structural"] is None:
            table["mean"] = None
            undefined[f"{key}.mean"] = "needs both the logical and the structural value"
        else:
            table["mean"] = 0.5 * (table["logical"] + table["structural"])

    report["counts"] = {"images": counts, "channels": {kind: start.channels[kind] for kind in ANOMALY_KINDS}}
    report["thresholds"] = {
        "count": int(refined.thresholds.size) if refined else int(start.thresholds.size),
        "passes_over_maps": passes.passes,
        "refinement_steps": refined.steps if refined else 0,
        "converged": refined.converged if refined else None,
        "max_adjacent_distance": refined.max_adjacent_distance if refined else None,
        "curve_max_distance": float(curve_max_distance),
        "sampled_scores": start.sampled_scores,
    }
    return report
