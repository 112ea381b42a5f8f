"""Streaming pixel metrics against tasks.metrics (the exact in-memory computation) and sklearn."""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from tasks import metrics
from tasks.metrics_stream import PIXEL_KEYS, aupro_key, stream_pixel_metrics

TOL = 1e-9


def make_pairs(seed: int, shapes, levels: int | None = 5, normal: tuple[int, ...] = (0,)):
    """One (map float32 H x W, mask bool H x W) per shape: 1-3 rectangles plus a lone pixel per
    image (several 8-connected components), none in images ``normal``. ``levels`` quantises the
    maps to few values, so ties span images and mix normal and anomalous pixels."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k, (h, w) in enumerate(shapes):
        mask = np.zeros((h, w), dtype=bool)
        if k not in normal:
            for _ in range(rng.integers(1, 4)):
                i, j = rng.integers(0, h), rng.integers(0, w)
                mask[i : i + rng.integers(1, 5), j : j + rng.integers(1, 5)] = True
            mask[rng.integers(0, h), w - 1] = True
        score = rng.random((h, w)) + 0.35 * mask
        if levels is not None:
            score = np.round(score * levels) / levels
        pairs.append((score.astype(np.float32), mask))
    return pairs


def stack(pairs):
    return np.stack([m for m, _ in pairs]), np.stack([g for _, g in pairs])


def assert_matches_metrics(got, pairs, limits=(0.05, 1.0)):
    """Compare with metrics.pixel_metrics and metrics.aupro on the N x H x W stack."""
    maps, masks = stack(pairs)
    ref = metrics.pixel_metrics(maps, masks)
    for key in PIXEL_KEYS:
        if ref[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(ref[key], abs=TOL), key
    for limit in limits:
        expected = metrics.aupro(maps, masks, limit)
        assert got[aupro_key(limit)] == (None if expected is None else pytest.approx(expected, abs=TOL))


def reference_by_hand(pairs, limits):
    """metrics.py's computation on the concatenated pixels of images of different sizes, with
    components labelled per image: {'pixel_auroc', 'pixel_ap', 'pixel_f1_max', limit: aupro}."""
    scores = np.concatenate([m.ravel().astype(np.float64) for m, _ in pairs])
    positive = np.concatenate([g.ravel() for _, g in pairs])
    r = metrics._rank(scores, positive)
    labelled, offset = [], 0
    for _, mask in pairs:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        labelled.append(np.where(labels > 0, labels + offset, 0).ravel())
        offset += count
    component = np.concatenate(labelled)
    area = np.bincount(component, minlength=offset + 1).astype(np.float64)
    hit = component[r.order[np.flatnonzero(r.pos_sorted)]]
    gained = np.concatenate(([0.0], np.cumsum(1.0 / (offset * area[hit]))))
    fpr, pro = metrics._with_origin(r.fps, r.n_neg), np.concatenate(([0.0], gained[r.tps]))
    out = {"pixel_auroc": metrics._auroc(r), "pixel_ap": metrics._average_precision(r)}
    out["pixel_f1_max"] = metrics._f1_max(r)
    out.update({limit: metrics._area_to(fpr, pro, limit) for limit in limits})
    return out, scores, positive


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("budget", [1, 7, 64, 1 << 22])
@pytest.mark.parametrize("levels", [3, 20, None])
@pytest.mark.parametrize("seed", range(3))
def test_equals_pixel_metrics_with_ties_and_tiny_budgets(seed, levels, budget):
    pairs = make_pairs(seed, [(9, 10)] * 7, levels, normal=(0, 4))
    got = stream_pixel_metrics(iter(pairs), fpr_limits=(0.05, 0.3, 1.0), budget=budget)
    assert_matches_metrics(got, pairs)
    assert got["pixel_aupro@0.3"] == got["pixel_aupro"]


@pytest.mark.parametrize("limit", [0.01, 0.05, 0.2, 0.5, 0.77, 1.0])
def test_aupro_limits_equal_metrics_aupro(limit):
    pairs = make_pairs(21, [(16, 16)] * 5, levels=8)
    got = stream_pixel_metrics(iter(pairs), fpr_limits=(limit,), budget=13)
    maps, masks = stack(pairs)
    assert got[aupro_key(limit)] == pytest.approx(metrics.aupro(maps, masks, limit), abs=TOL)
    assert got["pixel_aupro"] == pytest.approx(metrics.aupro(maps, masks, 0.3), abs=TOL)  # 0.3 is always given


@pytest.mark.parametrize("budget", [64, 1 << 22])
def test_many_images(budget):
    pairs = make_pairs(5, [(6, 7)] * 150, levels=6, normal=tuple(range(0, 150, 3)))
    assert_matches_metrics(stream_pixel_metrics(iter(pairs), fpr_limits=(0.05, 1.0), budget=budget), pairs)


@pytest.mark.parametrize("budget", [1, 7, 1 << 22])
def test_all_equal_maps(budget):
    """One tie group spanning every image: it must enter as a whole, however small the budget."""
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[1, 2:6, 2:7] = True
    masks[2, 0, 0] = masks[2, 9, 9] = True  # 22 of 300 pixels, 3 components
    pairs = [(np.full((10, 10), 0.25, dtype=np.float32), m) for m in masks]
    got = stream_pixel_metrics(iter(pairs), fpr_limits=(0.05, 1.0), budget=budget)
    assert_matches_metrics(got, pairs)
    p = 22 / 300
    assert got["pixel_auroc"] == pytest.approx(0.5, abs=TOL)
    assert got["pixel_ap"] == pytest.approx(p, abs=TOL)
    assert got["pixel_f1_max"] == pytest.approx(2 * p / (1 + p), abs=TOL)
    assert got["pixel_aupro"] == pytest.approx(0.15, abs=TOL)  # PRO = FPR line


def test_category_without_positives_is_all_none():
    pairs = make_pairs(2, [(8, 9)] * 4, normal=(0, 1, 2, 3))
    got = stream_pixel_metrics(iter(pairs), fpr_limits=(0.05, 0.3), budget=5)
    assert got == dict.fromkeys([*PIXEL_KEYS, "pixel_aupro@0.05", "pixel_aupro@0.3"])
    assert metrics.pixel_metrics(*stack(pairs)) == dict.fromkeys(PIXEL_KEYS)


@pytest.mark.parametrize("budget", [3, 1 << 22])
def test_category_without_negatives(budget):
    rng = np.random.default_rng(1)
    pairs = [(np.round(rng.random((6, 5)), 1).astype(np.float32), np.ones((6, 5), dtype=bool)) for _ in range(3)]
    got = stream_pixel_metrics(iter(pairs), fpr_limits=(0.05,), budget=budget)
    assert_matches_metrics(got, pairs, limits=(0.05,))
    assert got["pixel_auroc"] is None and got["pixel_aupro"] is None and got["pixel_aupro@0.05"] is None
    assert got["pixel_ap"] == pytest.approx(1.0) and got["pixel_f1_max"] == pytest.approx(1.0)


def test_pro_false_gives_no_aupro():
    pairs = make_pairs(3, [(9, 9)] * 4)
    got = stream_pixel_metrics(iter(pairs), pro=False, fpr_limits=(0.05,), budget=9)
    assert got["pixel_aupro"] is None and got["pixel_aupro@0.05"] is None
    ref = metrics.pixel_metrics(*stack(pairs), pro=False)
    assert got["pixel_auroc"] == pytest.approx(ref["pixel_auroc"], abs=TOL)
    assert got["pixel_ap"] == pytest.approx(ref["pixel_ap"], abs=TOL)


@pytest.mark.parametrize("budget", [1, 10, 1 << 22])
@pytest.mark.parametrize("levels", [4, None])
def test_images_of_different_sizes(levels, budget):
    shapes = [(5, 9), (12, 7), (1, 20), (16, 16), (9, 3), (7, 7), (2, 2)]
    pairs = make_pairs(8, shapes, levels, normal=(1, 5))
    limits = (0.05, 0.3, 1.0)
    got = stream_pixel_metrics(iter(pairs), fpr_limits=limits, budget=budget)
    ref, scores, positive = reference_by_hand(pairs, limits)
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert got[key] == pytest.approx(ref[key], abs=TOL), key
    for limit in limits:
        assert got[aupro_key(limit)] == pytest.approx(ref[limit], abs=TOL), limit
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(positive, scores), abs=TOL)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(positive, scores), abs=TOL)


def test_values_are_plain_floats():
    got = stream_pixel_metrics(iter(make_pairs(4, [(8, 8)] * 3)), fpr_limits=(0.05,))
    assert list(got) == [*PIXEL_KEYS, "pixel_aupro@0.05"]
    assert all(type(v) is float for v in got.values())


# ----------------------------------------------------------------------------- errors, spill file


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_maps_raise(bad):
    pairs = make_pairs(0, [(6, 6)] * 3)
    pairs[1][0][2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream_pixel_metrics(iter(pairs))


def test_invalid_arguments_raise():
    pairs = make_pairs(0, [(6, 6)] * 2)
    with pytest.raises(ValueError, match="fpr_limit"):
        stream_pixel_metrics(iter(pairs), fpr_limits=(0.0,))
    with pytest.raises(ValueError, match="budget"):
        stream_pixel_metrics(iter(pairs), budget=0)
    with pytest.raises(ValueError, match="shape"):
        stream_pixel_metrics([(pairs[0][0], pairs[0][1][:, :4])])


def watched(pairs, spill_dir, seen: list, fail: Exception | None = None):
    """Yield ``pairs``, recording the spill directory's files when yielding the 3rd; raise ``fail`` there."""
    for k, pair in enumerate(pairs):
        if k == 2:
            seen.extend(os.listdir(spill_dir))
            if fail is not None:
                raise fail
        yield pair


@pytest.mark.parametrize("case", ["success", "nan", "generator_error"])
def test_spill_file_removed(tmp_path, case):
    pairs, seen = make_pairs(6, [(8, 8)] * 5), []
    if case == "nan":
        pairs[2][0][0, 0] = np.nan  # the 3rd image
    fail = RuntimeError("reader broke") if case == "generator_error" else None
    stream = watched(pairs, tmp_path, seen, fail)
    if case == "success":
        assert stream_pixel_metrics(stream, spill_dir=str(tmp_path), budget=4)["pixel_auroc"] is not None
    else:
        with pytest.raises((ValueError, RuntimeError), match="NaN|reader broke"):
            stream_pixel_metrics(stream, spill_dir=str(tmp_path), budget=4)
    assert len(seen) == 1 and seen[0].endswith(".spill")  # the spill file existed while streaming
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- memory


def lazy_images(n: int, size: int = 128):
    """n (map, mask) pairs of size x size, made one at a time."""
    for k in range(n):
        rng = np.random.default_rng(k)
        mask = np.zeros((size, size), dtype=bool)
        if k % 2:
            mask[20:50, 30:70] = True
            mask[100, 5] = True
        score = rng.random((size, size), dtype=np.float32)
        score[mask] += 0.5
        yield score, mask


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_image_count():
    """Traced (not timed) peak: streaming 40 images needs < 2x the peak of 10; metrics.py's grows."""
    stream = {n: traced_peak(lambda n=n: stream_pixel_metrics(lazy_images(n), budget=1 << 14)) for n in (10, 40)}
    stacks = {n: stack(list(lazy_images(n))) for n in (10, 40)}
    in_memory = {n: traced_peak(lambda n=n: metrics.pixel_metrics(*stacks[n])) for n in (10, 40)}
    assert stream[40] < 2 * stream[10], stream
    assert in_memory[40] > 2 * in_memory[10], in_memory
    assert stream[40] < in_memory[40] / 4, (stream, in_memory)
