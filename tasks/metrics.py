"""Anomaly-segmentation metrics, computed per category. The positive class is *anomalous*.

Pixel metrics (AUROC, AP, F1-max, AUPRO) share one exact ranking of all pixels of a category:
pixels are sorted once by score, tied scores are grouped so that they enter together, and the
cumulative true/false positive counts at every distinct threshold (prediction = ``map >= t``)
give every curve exactly. This is the same computation as sklearn's ``roc_auc_score`` and
``average_precision_score`` (the tests check equality), but costs one ``argsort`` instead of
three stable sorts plus label scans, which matters at 200 x 400 x 400 = 32 M pixels.
Image metrics (N scores) use the same ranking. sklearn stays the tests' reference; not importing it
saves about 1.5 s of every run's start-up.

Undefined metrics are ``None``: AUROC needs both classes, AP and F1 need a positive, AUPRO
needs a ground-truth component and a normal pixel. Values are plain Python floats.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")

# 8-connectivity inside each image and none across images when labelling an N x H x W stack.
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True


class _Ranking(NamedTuple):
    """Exact threshold sweep over P scored samples, G distinct scores.

    order: P int, sample indices by descending score.
    pos_sorted: P bool, positive flag of each sample in that order.
    tps, fps: G int, cumulative positives / negatives with score >= each distinct score
        (descending thresholds; the last entry counts every sample).
    """

    order: np.ndarray
    pos_sorted: np.ndarray
    tps: np.ndarray
    fps: np.ndarray

    @property
    def n_pos(self) -> int:
        return int(self.tps[-1]) if self.tps.size else 0

    @property
    def n_neg(self) -> int:
        return int(self.fps[-1]) if self.fps.size else 0


def _rank(scores: np.ndarray, positive: np.ndarray) -> _Ranking:
    """scores: P float (finite); positive: P bool -> _Ranking with tied scores grouped."""
    order = np.argsort(scores)[::-1]  # order inside a tie group is irrelevant: groups enter together
    ranked = scores[order]
    pos_sorted = positive[order]
    if ranked.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Ranking(order, pos_sorted, empty, empty)
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1)
    tps = np.cumsum(pos_sorted, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return _Ranking(order, pos_sorted, tps, fps)


def _with_origin(counts: np.ndarray, total: int) -> np.ndarray:
    """G cumulative counts -> G+1 rates starting at 0 (the threshold above every score)."""
    return np.concatenate(([0.0], counts / total))


def _auroc(r: _Ranking) -> float | None:
    """Trapezoid area under the exact ROC curve; None unless both classes are present."""
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    return float(np.trapezoid(_with_origin(r.tps, r.n_pos), _with_origin(r.fps, r.n_neg)))


def _average_precision(r: _Ranking) -> float | None:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds (sklearn's definition); None without positives."""
    if r.n_pos == 0:
        return None
    precision = r.tps / (r.tps + r.fps)
    return float(np.sum(np.diff(_with_origin(r.tps, r.n_pos)) * precision))


def _f1_max(r: _Ranking) -> float:
    """max over thresholds of 2PR/(P+R) = 2TP / (2TP + FP + FN); 0 where TP == 0 (P+R == 0)."""
    if r.tps.size == 0:
        return 0.0
    denominator = 2 * r.tps + r.fps + (r.n_pos - r.tps)
    f1 = np.divide(2.0 * r.tps, denominator, out=np.zeros(r.tps.shape), where=denominator > 0)
    return float(f1.max())


def _as_stack(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """maps, masks: N x H x W (or H x W for one image) -> (float N x H x W, bool N x H x W)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.ndim != 3:
        raise ValueError(f"expected N x H x W arrays, got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float32)
    if not np.all(np.isfinite(maps)):
        raise ValueError("anomaly maps contain NaN or infinite values")
    return maps, masks.astype(bool, copy=False)


def _pro_points(r: _Ranking, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact PRO curve from a pixel ranking of ``masks`` (N x H x W bool).

    Each normal pixel adds 1/num_negatives to FPR, each pixel of component c adds
    1/(num_components * area_c) to PRO. Returns (fpr, pro), G+1 floats each, starting at
    (0, 0) with ascending fpr; None when there is no component or no normal pixel.
    """
    from scipy import ndimage   # imported when needed: a warm run never labels components
    components, n_components = ndimage.label(masks, structure=_PLANE_8)
    if n_components == 0 or r.n_neg == 0:
        return None
    flat = components.reshape(-1)
    area = np.bincount(flat, minlength=n_components + 1)
    hit = flat[r.order[np.flatnonzero(r.pos_sorted)]]  # component of each positive, by rank
    gained = np.concatenate(([0.0], np.cumsum(1.0 / (n_components * area[hit].astype(np.float64)))))
    pro = np.concatenate(([0.0], gained[r.tps]))
    return _with_origin(r.fps, r.n_neg), pro


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Normalised trapezoid area of y over x (ascending) on [0, limit].

    The curve is linearly interpolated at exactly x = limit; x[0] must be 0, x[-1] >= limit.
    """
    k = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    xs, ys = x[:k], y[:k]
    if xs[-1] < limit and k < x.size:  # x[k] > limit > x[k-1]: interpolate the end point
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs) / limit)


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact PRO curve of one category (official MVTec AD definition).

    maps: N x H x W float anomaly maps; masks: N x H x W bool ground truth.
    Components are 8-connected and labelled per image. Returns (fpr, pro): two float64
    arrays of G+1 points (G distinct scores), starting at (0, 0), fpr ascending, ending at (1, 1).
    Raises ValueError when the curve is undefined (no GT component or no normal pixel).
    """
    maps, masks = _as_stack(maps, masks)
    points = _pro_points(_rank(maps.reshape(-1), masks.reshape(-1)), masks)
    if points is None:
        raise ValueError("PRO curve undefined: needs a ground-truth component and a normal pixel")
    return points


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit.

    maps: N x H x W float; masks: N x H x W bool. Trapezoid rule with the curve linearly
    interpolated at fpr_limit. None when there is no GT component or no normal pixel.
    """
    _check_limit(fpr_limit)
    maps, masks = _as_stack(maps, masks)
    points = _pro_points(_rank(maps.reshape(-1), masks.reshape(-1)), masks)
    return None if points is None else _area_to(*points, fpr_limit)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, pro: bool = True) -> dict[str, float | None]:
    """Pixel-level metrics of one category.

    maps: N x H x W float32 anomaly maps; masks: N x H x W bool ground truth (same H, W).
    Returns {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"} (AUPRO over FPR 0..0.3,
    None when ``pro`` is False). All None for a category without anomalous pixels; AUROC and
    AUPRO None when there is no normal pixel.
    """
    maps, masks = _as_stack(maps, masks)
    r = _rank(maps.reshape(-1), masks.reshape(-1))
    out: dict[str, float | None] = dict.fromkeys(PIXEL_KEYS)
    if r.n_pos == 0:
        return out
    out["pixel_auroc"] = _auroc(r)
    out["pixel_ap"] = _average_precision(r)
    out["pixel_f1_max"] = _f1_max(r)
    if pro:
        points = _pro_points(r, masks)
        out["pixel_aupro"] = None if points is None else _area_to(*points, 0.3)
    return out


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Maximum F1 over all thresholds (prediction = score >= t, ties enter together).

    scores: P float; labels: P int {0,1} or bool, 1 = anomalous. F1 = 2PR/(P+R), 0 where
    P+R == 0; 0.0 when there is no positive (no threshold yields a true positive).
    """
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    return _f1_max(_rank(scores, labels != 0))


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Image-level metrics of one category.

    scores: N float image scores; labels: N int {0,1}, 1 = anomalous.
    Returns {"image_auroc", "image_ap", "image_f1_max"}; AUROC None unless both classes occur,
    AP and F1 None without an anomalous image.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("image labels must be 0 (normal) or 1 (anomalous)")
    y = labels.astype(np.int64)
    n_pos = int(y.sum())
    out: dict[str, float | None] = dict.fromkeys(IMAGE_KEYS)
    if n_pos == 0:
        return out
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    ranking = _rank(scores, y == 1)
    out["image_auroc"] = _auroc(ranking) if n_pos < y.size else None
    out["image_ap"] = _average_precision(ranking)
    out["image_f1_max"] = _f1_max(ranking)
    return out


def image_curves(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]] | None:
    """Exact ROC and PR points of image scores (the curves behind :func:`image_metrics`).

    scores: N float; labels: N int {0,1}, 1 = anomalous. Returns {"fpr", "tpr", "precision"}: G floats each, one
    point per distinct score, thresholds descending (recall = tpr); None unless both classes occur.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) == 1
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    r = _rank(scores, positive)
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    return {"fpr": (r.fps / r.n_neg).tolist(), "tpr": (r.tps / r.n_pos).tolist(),
            "precision": (r.tps / (r.tps + r.fps)).tolist()}


def mean_metrics(per_category: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Unweighted mean over categories, per metric key (keys in first-seen order).

    per_category: {category: {metric: value or None}}. None values are ignored; a metric
    that is None (or missing) in every category stays None.
    """
    keys = list(dict.fromkeys(k for metrics in per_category.values() for k in metrics))
    out: dict[str, float | None] = {}
    for key in keys:
        values = [m[key] for m in per_category.values() if m.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def resize_map(m: np.ndarray, size: int) -> np.ndarray:
    """H x W anomaly map -> size x size float32, bilinear (cv2.INTER_LINEAR, half-pixel centres)."""
    import cv2   # here: a warm run's evaluation is cached, and cv2's import costs 0.05 s

    src = np.ascontiguousarray(m, dtype=np.float32)
    return cv2.resize(src, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    """H x W bool/uint8 mask -> size x size bool, nearest neighbour then > 0."""
    import cv2

    src = np.ascontiguousarray(np.asarray(m) > 0, dtype=np.uint8)
    return cv2.resize(src, (size, size), interpolation=cv2.INTER_NEAREST) > 0
