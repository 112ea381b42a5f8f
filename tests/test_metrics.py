"""Metrics against independent brute-force references that sweep every distinct threshold."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tasks.metrics import (
    aupro,
    f1_max,
    image_metrics,
    mean_metrics,
    pixel_metrics,
    pro_curve,
    resize_map,
    resize_mask,
)

TOL = 1e-6


# ----------------------------------------------------------------------------- brute force


def ref_components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """H x W bool -> list of 8-connected components as (rows, cols) index arrays (flood fill)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for i0 in range(h):
        for j0 in range(w):
            if not mask[i0, j0] or seen[i0, j0]:
                continue
            stack, pixels = [(i0, j0)], []
            seen[i0, j0] = True
            while stack:
                i, j = stack.pop()
                pixels.append((i, j))
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        a, b = i + di, j + dj
                        if 0 <= a < h and 0 <= b < w and mask[a, b] and not seen[a, b]:
                            seen[a, b] = True
                            stack.append((a, b))
            comps.append((np.array([p[0] for p in pixels]), np.array([p[1] for p in pixels])))
    return comps


def ref_sweep(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, int, int]]:
    """(threshold, TP, FP) for prediction = score >= t, at every distinct score, descending."""
    scores, labels = scores.ravel(), labels.ravel().astype(bool)
    out = []
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        out.append((t, int((pred & labels).sum()), int((pred & ~labels).sum())))
    return out


def ref_trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((xs[k + 1] - xs[k]) * (ys[k] + ys[k + 1]) / 2 for k in range(len(xs) - 1))


def ref_auroc(scores, labels) -> float:
    pos, neg = int(labels.sum()), int((~labels.astype(bool)).sum())
    sweep = ref_sweep(scores, labels)
    return ref_trapezoid([0.0] + [fp / neg for _, _, fp in sweep], [0.0] + [tp / pos for _, tp, _ in sweep])


def ref_ap(scores, labels) -> float:
    pos, area, prev_recall = int(labels.sum()), 0.0, 0.0
    for _, tp, fp in ref_sweep(scores, labels):
        area += (tp / pos - prev_recall) * tp / (tp + fp)
        prev_recall = tp / pos
    return area


def ref_f1(scores, labels) -> float:
    pos, best = int(labels.sum()), 0.0
    for _, tp, fp in ref_sweep(scores, labels):
        p, r = tp / (tp + fp), tp / pos
        best = max(best, 2 * p * r / (p + r) if p + r > 0 else 0.0)
    return best


def ref_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[list[float], list[float]]:
    comps = [(n, rows, cols) for n in range(len(masks)) for rows, cols in ref_components(masks[n])]
    neg = int((~masks).sum())
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fprs.append(int((pred & ~masks).sum()) / neg)
        pros.append(sum(pred[n, r, c].mean() for n, r, c in comps) / len(comps))
    return fprs, pros


def ref_aupro(maps, masks, limit: float = 0.3) -> float:
    xs, ys = ref_pro_curve(maps, masks)
    area = 0.0
    for k in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_end) / 2
    return area / limit


def random_case(seed: int, decimals: int | None = 1, n: int = 4, size: int = 12):
    """n x size x size float32 maps with planted rectangles (+ a lone pixel); image 0 normal."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for k in range(1, n):
        for _ in range(rng.integers(1, 3)):
            i, j = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[k, i : i + h, j : j + w] = True
        masks[k, rng.integers(0, size), size - 1] = True
    maps = rng.random(masks.shape) + 0.35 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)  # injects ties, also between normal and anomalous pixels
    return maps.astype(np.float32), masks


# ----------------------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [1, 2, None])
def test_pixel_metrics_match_bruteforce(seed, decimals):
    maps, masks = random_case(seed, decimals)
    got = pixel_metrics(maps, masks)
    assert got["pixel_auroc"] == pytest.approx(ref_auroc(maps, masks), abs=TOL)
    assert got["pixel_ap"] == pytest.approx(ref_ap(maps, masks), abs=TOL)
    assert got["pixel_f1_max"] == pytest.approx(ref_f1(maps, masks), abs=TOL)
    assert got["pixel_aupro"] == pytest.approx(ref_aupro(maps, masks, 0.3), abs=TOL)


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.5, 1.0])
def test_aupro_matches_bruteforce_at_several_limits(limit):
    maps, masks = random_case(11, decimals=1)
    assert aupro(maps, masks, limit) == pytest.approx(ref_aupro(maps, masks, limit), abs=TOL)


@pytest.mark.parametrize("decimals", [1, None])
def test_pro_curve_matches_bruteforce_points(decimals):
    maps, masks = random_case(3, decimals)
    fpr, pro = pro_curve(maps, masks)
    ref_fpr, ref_pro = ref_pro_curve(maps, masks)
    assert fpr.tolist() == pytest.approx(ref_fpr, abs=TOL)
    assert pro.tolist() == pytest.approx(ref_pro, abs=TOL)
    assert (fpr[0], pro[0]) == (0.0, 0.0) and np.all(np.diff(fpr) >= 0)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("decimals", [2, None])
def test_pixel_auroc_ap_equal_sklearn(decimals):
    maps, masks = random_case(7, decimals)
    got = pixel_metrics(maps, masks, pro=False)
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert got["pixel_aupro"] is None


def test_all_normal_category_gives_none():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    got = pixel_metrics(maps, np.zeros(maps.shape, dtype=bool))
    assert got == {"pixel_auroc": None, "pixel_ap": None, "pixel_f1_max": None, "pixel_aupro": None}
    assert aupro(maps, np.zeros(maps.shape, dtype=bool)) is None


def test_all_anomalous_category():
    maps = np.random.default_rng(1).random((2, 6, 6)).astype(np.float32)
    masks = np.ones(maps.shape, dtype=bool)
    got = pixel_metrics(maps, masks)
    assert got["pixel_auroc"] is None and got["pixel_aupro"] is None
    assert got["pixel_ap"] == pytest.approx(1.0) and got["pixel_f1_max"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="undefined"):
        pro_curve(maps, masks)


def test_constant_maps():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[1, 2:6, 2:7] = True  # 20 of 200 pixels
    got = pixel_metrics(np.full(masks.shape, 0.25, dtype=np.float32), masks)
    p = 20 / 200
    assert got["pixel_auroc"] == pytest.approx(0.5)
    assert got["pixel_ap"] == pytest.approx(p)
    assert got["pixel_f1_max"] == pytest.approx(2 * p / (1 + p))
    assert got["pixel_aupro"] == pytest.approx(0.15)  # PRO = FPR line: 0.3**2 / 2 / 0.3


def test_single_pixel_component():
    rng = np.random.default_rng(4)
    maps = np.round(rng.random((1, 6, 6)), 1).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 2, 3] = True
    maps[0, 2, 3] = 0.8
    fpr, pro = pro_curve(maps, masks)
    jump = int((maps[~masks] >= 0.8).sum()) / 35  # normal pixels predicted when the pixel enters
    assert pro[fpr < jump - 1e-12].max() == 0.0
    assert pro[np.isclose(fpr, jump)].max() == pytest.approx(1.0)
    assert aupro(maps, masks) == pytest.approx(ref_aupro(maps, masks), abs=TOL)


def test_pro_is_mean_over_components_not_pixels():
    maps = np.full((1, 10, 10), 0.2, dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 0, 0] = True  # component A: 1 pixel, found first
    maps[0, 0, 0] = 1.0
    masks[0, 5:9, 3:8] = True  # component B: 20 pixels
    maps[0, 5:9, 3:8] = 0.6
    maps[0, 1, 1:9] = 0.8  # 8 normal pixels between the two
    fpr, pro = pro_curve(maps, masks)
    assert fpr.tolist() == pytest.approx([0, 0, 8 / 79, 8 / 79, 1])
    assert pro.tolist() == pytest.approx([0, 0.5, 0.5, 1.0, 1.0])  # not 1/21 at the 2nd point


def test_components_are_labelled_per_image():
    maps = np.zeros((2, 6, 6), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 2:5, 2:5] = True
    maps[0, 2:5, 2:5] = 1.0
    masks[1, 3, 3] = True  # same place as image 0's region: must stay a separate component
    maps[1, 3, 3] = 0.5
    fpr, pro = pro_curve(maps, masks)
    assert pro.tolist() == pytest.approx([0, 0.5, 1.0, 1.0])  # merged across images would give 0.9
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1])


def test_components_use_8_connectivity():
    maps = np.zeros((1, 6, 6), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 1, 1] = True  # touches the block only diagonally
    masks[0, 2:4, 2:4] = True
    maps[0, 2:4, 2:4] = 1.0
    fpr, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.8)  # one component of 5 pixels; 4-connectivity would give 0.5


def test_fpr_limit_interpolated_end_point():
    maps = np.zeros((1, 10, 10), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 0, :] = True  # one component of 10 pixels
    maps[0, 0, :5] = 1.0  # half of it above every normal pixel, half tied with most of them
    maps[0, 5, :9] = 0.9  # 9 of 90 normal pixels -> last curve point before 0.3 is at FPR 0.1
    fpr, pro = pro_curve(maps, masks)
    assert fpr.tolist() == pytest.approx([0, 0, 0.1, 1])
    assert pro.tolist() == pytest.approx([0, 0.5, 0.5, 1])
    expected = (0.1 * 0.5 + 0.2 * (0.5 + 11 / 18) / 2) / 0.3  # PRO(0.3) = 0.5 + 0.5 * 0.2 / 0.9
    assert aupro(maps, masks, 0.3) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(29 / 54)
    assert aupro(maps, masks, 0.3) == pytest.approx(ref_aupro(maps, masks, 0.3), abs=TOL)


def test_invalid_inputs_raise():
    maps, masks = random_case(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, 0.0)
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(maps, masks[:, :5])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(bad, masks)


def test_values_are_plain_floats():
    maps, masks = random_case(2)
    values = list(pixel_metrics(maps, masks).values())
    values += list(image_metrics(np.array([0.1, 0.7, 0.4]), np.array([0, 1, 1])).values())
    values.append(f1_max(maps.ravel(), masks.ravel()))
    assert all(type(v) is float for v in values)


def test_large_category_returns_finite_numbers():
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 400, 400), dtype=bool)
    masks[50:, 100:160, 200:280] = True
    masks[50:, 300, 30] = True
    maps = rng.random(masks.shape, dtype=np.float32)
    maps[masks] += 0.5
    got = pixel_metrics(maps, masks)
    assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in got.values())
    assert got["pixel_auroc"] > 0.8 and got["pixel_aupro"] > 0.5


# ----------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_match_bruteforce(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # ties
    got = image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(ref_auroc(scores, labels), abs=TOL)
    assert got["image_ap"] == pytest.approx(ref_ap(scores, labels), abs=TOL)
    assert got["image_f1_max"] == pytest.approx(ref_f1(scores, labels), abs=TOL)


def test_image_metrics_one_class():
    scores = np.array([0.2, 0.5, 0.9])
    assert image_metrics(scores, np.zeros(3, int)) == {"image_auroc": None, "image_ap": None, "image_f1_max": None}
    only_anomalous = image_metrics(scores, np.ones(3, int))
    assert only_anomalous["image_auroc"] is None
    assert only_anomalous["image_ap"] == pytest.approx(1.0)
    assert only_anomalous["image_f1_max"] == pytest.approx(1.0)


def test_image_metrics_constant_scores_and_bad_labels():
    got = image_metrics(np.full(6, 0.3), np.array([0, 0, 0, 0, 1, 1]))
    assert got["image_auroc"] == pytest.approx(0.5)
    assert got["image_ap"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="labels"):
        image_metrics(np.array([0.1, 0.2]), np.array([0, 2]))


def test_f1_max_against_sklearn_curve_and_no_positive():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.2 * labels, 2)
    p, r, _ = precision_recall_curve(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    assert f1_max(scores, labels) == pytest.approx(f1.max(), abs=1e-9)
    assert f1_max(scores, np.zeros(300, int)) == 0.0
    assert f1_max(np.array([0.9, 0.1]), np.array([1, 0])) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- helpers


def test_mean_metrics_ignores_none():
    per_category = {
        "bottle": {"pixel_auroc": 0.9, "pixel_aupro": None, "image_auroc": None},
        "cable": {"pixel_auroc": 0.7, "pixel_aupro": 0.6, "image_auroc": None},
        "wood": {"pixel_auroc": 0.8, "pixel_aupro": 0.3},
    }
    got = mean_metrics(per_category)
    assert got["pixel_auroc"] == pytest.approx(0.8)
    assert got["pixel_aupro"] == pytest.approx(0.45)
    assert got["image_auroc"] is None
    assert list(got) == ["pixel_auroc", "pixel_aupro", "image_auroc"]
    assert mean_metrics({}) == {}


def test_resize_map_bilinear():
    m = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float64)
    out = resize_map(m, 4)
    assert out.shape == (4, 4) and out.dtype == np.float32
    assert out[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])  # half-pixel centres
    assert np.allclose(out, out[0])
    assert np.allclose(resize_map(np.full((7, 5), 0.3), 3), 0.3)


def test_resize_mask_nearest():
    m = np.array([[True, False], [False, False]])
    out = resize_mask(m, 4)
    assert out.dtype == bool and out.shape == (4, 4)
    assert out[:2, :2].all() and out.sum() == 4
    small = resize_mask(np.kron(np.array([[255, 0], [0, 255]], dtype=np.uint8), np.ones((4, 4), np.uint8)), 2)
    assert small.tolist() == [[True, False], [False, True]]


@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_equal_sklearn(seed):
    """Image metrics use the pixel ranking (no sklearn import at run time); sklearn is the reference."""
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, 200)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(200) + 0.25 * labels, 2)   # many ties
    got = image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
