"""Per-category decision thresholds from image scores: pure functions, no I/O.

Decision rule everywhere: an image **fails** when ``score > threshold`` and passes otherwise.

- Known-good images only (``frr_threshold``): with n good scores sorted ascending s(1) <= ... <= s(n) and
  k = the largest integer with k / n <= target FRR, the threshold is the order statistic s(n - k). At most the
  k scores above it fail (fewer when s(n - k) is tied with higher scores), so the empirical FRR is <= target,
  and it is the lowest such threshold among the scores: any lower one fails s(n - k) .. s(n), k + 1 images.
  target 0 gives the maximum (nothing fails); n = 1 gives the one score.
- Good and anomalous images (``f1_max_threshold``): the threshold whose pass/fail split has the highest F1
  (anomalous = positive); of several equal maxima the highest threshold (fewest fails) wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RULES = ("target_frr", "f1_max")


@dataclass(frozen=True)
class CategoryThreshold:
    """One category's threshold and how it was chosen (``rule`` one of RULES)."""

    threshold: float
    rule: str
    n_good: int
    n_anomalous: int
    empirical_frr: float          # share of the good images with score > threshold
    f1: float | None = None       # the F1 at the threshold (f1_max rule)


def allowed_rejects(n: int, target_frr: float) -> int:
    """The largest k with k / n <= target_frr (compared as floats, as a reader checks it)."""
    k = min(n, max(0, math.floor(target_frr * n)))
    while k > 0 and k / n > target_frr:
        k -= 1
    while k < n and (k + 1) / n <= target_frr:
        k += 1
    return k


def frr_threshold(good_scores: np.ndarray, target_frr: float) -> float:
    """good_scores: N float (N >= 1, finite) -> the order statistic s(N - k) of the module docstring."""
    scores = np.sort(np.asarray(good_scores, np.float64).reshape(-1))
    if scores.size == 0:
        raise ValueError("frr_threshold: no good scores")
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"frr_threshold: target FRR {target_frr} is not in [0, 1)")
    k = allowed_rejects(scores.size, target_frr)
    return float(scores[scores.size - k - 1])


def f1_max_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """scores: N float, labels: N int (1 anomalous, 0 good), both classes present -> (threshold, F1).

    Candidate cuts flag the images with score >= each distinct score d; the threshold of the best cut is the
    next lower distinct score (so that ``score > threshold`` flags exactly those images), or just below d when d
    is the lowest score."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) == 1
    if not positive.any() or positive.all():
        raise ValueError("f1_max_threshold: needs both good and anomalous images")
    distinct, inverse = np.unique(scores, return_inverse=True)            # ascending
    pos_at = np.bincount(inverse, weights=positive, minlength=distinct.size)
    all_at = np.bincount(inverse, minlength=distinct.size)
    tp = np.cumsum(pos_at[::-1])[::-1]          # positives with score >= distinct[i]
    flagged = np.cumsum(all_at[::-1])[::-1]
    f1 = 2.0 * tp / (flagged + positive.sum())  # 2TP / (2TP + FP + FN) = 2TP / (flagged + positives)
    best = int(np.flatnonzero(f1 == f1.max())[-1])                         # highest cut among equal maxima
    threshold = distinct[best - 1] if best > 0 else float(np.nextafter(distinct[0], -np.inf))
    return float(threshold), float(f1[best])


def choose_threshold(scores: np.ndarray, labels: np.ndarray, target_frr: float) -> CategoryThreshold:
    """One category: F1-max when it has good and anomalous images, else the target-FRR order statistic over its
    good images. labels: N int, 1 anomalous, 0 good, -1 unlabelled (taken as good: calibration images are
    known-good unless labelled otherwise)."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.size != labels.size:
        raise ValueError(f"choose_threshold: {scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError(f"choose_threshold: {int((~np.isfinite(scores)).sum())} scores are not finite")
    anomalous = labels == 1
    good = scores[~anomalous]
    if good.size == 0:
        raise ValueError("no good image to calibrate on (every image is labelled anomalous)")
    if anomalous.any():
        threshold, f1 = f1_max_threshold(scores, anomalous.astype(np.int8))
        rule = "f1_max"
    else:
        threshold, f1, rule = frr_threshold(good, target_frr), None, "target_frr"
    return CategoryThreshold(threshold, rule, int(good.size), int(anomalous.sum()),
                             float((good > threshold).sum() / good.size), f1)
