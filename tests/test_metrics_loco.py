"""MVTec LOCO metrics (tasks.metrics_loco*) against brute force, hand-computed values and sklearn."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.metrics_loco import (DefectChannel, LocoImage, MapPasses, auc_spro, curve_of,
                                evaluate_loco_category, official_script_image_auroc, refine_thresholds,
                                refinement_queries, saturation_area, spro_curve_at, start_thresholds,
                                totals_at)

KIND_PAIRS = (("logical_anomalies", "logical"), ("structural_anomalies", "structural"))


def channel(mask: np.ndarray, threshold: float, relative: bool) -> DefectChannel:
    return DefectChannel(mask, saturation_area(int(mask.sum()), threshold, relative))


def rect(shape, top, left, height, width) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


def tiny_category(seed: int, levels: int | None = None) -> list[LocoImage]:
    """Seven small images of four shapes (non-square, different sizes): 3 good, 2 logical, 2
    structural; several channels per image, relative and absolute saturation (one absolute threshold
    above its defect's area) and two channels overlapping. Defects are brighter than the background;
    ``levels`` quantises the maps so scores tie within and across images."""
    rng = np.random.default_rng(seed)
    shapes = [(6, 9), (9, 6), (5, 7), (6, 9), (7, 5), (6, 9), (9, 6)]
    kinds = ["good", "good", "good", "logical_anomalies", "logical_anomalies",
             "structural_anomalies", "structural_anomalies"]
    images = []
    for k, (shape, kind) in enumerate(zip(shapes, kinds)):
        values = rng.random(shape)
        channels: list[DefectChannel] = []
        if kind != "good":
            first = rect(shape, 1, 1, 3, 2)
            second = rect(shape, 3, 2, 2, 3)          # shares pixel (3, 2) with ``first``
            third = rect(shape, shape[0] - 1, shape[1] - 2, 1, 2)
            channels = [channel(first, 1.0, True), channel(second, 0.5, True),
                        channel(third, 40 if k % 2 else 1, False)]   # 40 > area 2: saturates at the area
            for c in channels:
                values[c.mask] += rng.random() * 0.8
        if levels is not None:
            values = np.round(values * levels) / levels
        images.append(LocoImage(kind, values.astype(np.float32), tuple(channels), name=f"img{k}"))
    return images


def brute_curve(images: list[LocoImage], thresholds) -> tuple[np.ndarray, np.ndarray]:
    """FPR and mean sPRO by plain loops over every threshold and every pixel (prediction: value > t)."""
    fprs, spros = [], []
    for t in thresholds:
        false_pos = free = 0
        overlaps = []
        for image in images:
            rows = image.anomaly_map.tolist()
            masks = [c.mask.tolist() for c in image.channels]
            covered = [0] * len(masks)
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    predicted = value > t
                    inside = [m[i][j] for m in masks]
                    if not any(inside):
                        free += 1
                        false_pos += predicted
                    for c, is_in in enumerate(inside):
                        covered[c] += predicted and is_in
            overlaps += [min(n / c.saturation_area, 1.0) for n, c in zip(covered, image.channels)]
        fprs.append(false_pos / free)
        spros.append(sum(overlaps) / len(overlaps))
    return np.array(fprs), np.array(spros)


def every_distinct_threshold(images: list[LocoImage]) -> np.ndarray:
    """Each distinct score (descending) and one below the minimum: every distinct binary prediction."""
    values = np.unique(np.concatenate([im.anomaly_map.ravel() for im in images])).astype(np.float64)
    return np.concatenate([values[::-1], [values[0] - 1.0]])


def clipped_polyline_area(fpr, spro, max_fpr: float) -> float:
    """Area under the polyline through (fpr, spro) in order, cut at max_fpr, / max_fpr (segment loop)."""
    area = 0.0
    for f0, s0, f1, s1 in zip(fpr[:-1], spro[:-1], fpr[1:], spro[1:]):
        if f0 >= max_fpr:
            break
        if f1 <= max_fpr:
            area += (f1 - f0) * (s0 + s1) / 2
        else:
            s_end = s0 + (s1 - s0) * (max_fpr - f0) / (f1 - f0)
            area += (max_fpr - f0) * (s0 + s_end) / 2
            break
    return area / max_fpr


def test_saturation_area_official_rounding():
    assert saturation_area(7, 0.5, True) == 3                     # 3.5 truncated, not rounded to 4
    assert saturation_area(100, 0.29, True) == int(0.29 * 100) == 28   # float product 28.999... truncated
    assert saturation_area(9, 1.0, True) == 9
    assert saturation_area(5, 10, False) == 5                     # absolute above the area: the area
    assert saturation_area(50, 10, False) == 10
    assert saturation_area(1, 0.5, True) == 0                     # the official value; channels refuse it
    for bad in [(5, 0.0, True), (5, 1.5, True), (5, 2.5, False), (5, 0, False), (-1, 3, False)]:
        with pytest.raises(ValueError):
            saturation_area(*bad)


@pytest.mark.parametrize("levels", [None, 6])
def test_curve_equals_brute_force_at_every_distinct_threshold(levels):
    images = tiny_category(seed=1, levels=levels)
    thresholds = every_distinct_threshold(images)
    shuffled = np.random.default_rng(0).permutation(thresholds)       # any order, kept in the output
    fpr, spro = spro_curve_at(images, shuffled)
    want_fpr, want_spro = brute_curve(images, shuffled)
    np.testing.assert_allclose(fpr, want_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(spro, want_spro, rtol=0, atol=1e-12)
    totals = totals_at(images, thresholds)
    for kind, _ in KIND_PAIRS:                  # each kind's curve: its own images plus the good ones
        subset = [im for im in images if im.kind in ("good", kind)]
        got = curve_of(totals, ("good", kind))
        want = brute_curve(subset, thresholds)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-12)


def test_overlapping_channels_and_good_images():
    shape = (4, 5)
    first, second = rect(shape, 0, 0, 2, 2), rect(shape, 1, 1, 2, 2)    # share pixel (1, 1)
    values = np.zeros(shape, np.float32)
    values[1, 1] = 1.0
    anomalous = LocoImage("logical_anomalies", values, (channel(first, 1.0, True), channel(second, 2, False)))
    fpr, spro = spro_curve_at([anomalous], [0.5, 1.0])
    assert fpr.tolist() == [0.0, 0.0]                           # the shared pixel is no false positive
    assert spro.tolist() == [(1 / 4 + 1 / 2) / 2, 0.0]   # counts for both channels; 1.0 > 1.0 is false
    good = np.zeros((3, 7), np.float32)
    good[0, :3] = 0.9
    fpr, spro = spro_curve_at([anomalous, LocoImage("good", good)], [0.5])
    free_pixels = shape[0] * shape[1] - 7 + 3 * 7               # 7 pixels lie in a defect
    assert fpr.tolist() == [3 / free_pixels] and spro.tolist() == [(1 / 4 + 1 / 2) / 2]


def test_auc_spro_interpolated_end_point_by_hand():
    fpr = [0.0, 0.0, 0.1, 0.2, 0.2, 1.0]         # vertical start, duplicate FPR 0.2
    spro = [0.0, 0.4, 0.6, 0.7, 0.9, 1.0]
    to_01 = 0.5 * (0.4 + 0.6) * 0.1
    to_02 = to_01 + 0.5 * (0.6 + 0.7) * 0.1      # the jump at 0.2 adds no area
    expected = {
        0.05: 0.5 * (0.4 + 0.5) * 0.05 / 0.05,                       # end sPRO 0.5 interpolated
        0.1: to_01 / 0.1,                                            # an FPR of the curve: no interpolation
        0.15: (to_01 + 0.5 * (0.6 + 0.65) * 0.05) / 0.15,
        0.2: to_02 / 0.2,
        0.3: (to_02 + 0.5 * (0.9 + (0.9 + 0.1 * 0.1 / 0.8)) * 0.1) / 0.3,   # from the later duplicate (0.9)
        1.0: (to_02 + 0.5 * (0.9 + 1.0) * 0.8) / 1.0,
    }
    for max_fpr, want in expected.items():
        assert auc_spro(fpr, spro, max_fpr) == pytest.approx(want, abs=1e-15)
        assert clipped_polyline_area(fpr, spro, max_fpr) == pytest.approx(want, abs=1e-15)
    for bad_fpr, bad_limit in [([0.1, 0.5, 1.0], 0.3), ([0.0, 0.5, 0.4], 0.3), ([0.0, 0.5, 0.8], 0.9),
                               ([0.0, 0.5, 1.0], 0.0)]:
        with pytest.raises(ValueError):
            auc_spro(bad_fpr, [0.0, 0.5, 1.0], bad_limit)


@pytest.mark.parametrize("seed,levels", [(2, None), (3, 12)])
def test_adaptive_auspro_matches_brute_force_within_its_bound(seed, levels):
    """The refined thresholds are a subset of all distinct ones, so the refined polyline's vertices are
    vertices of the exact one. Both curves rise monotonically, so between two adjacent refined points
    the exact curve stays inside their box: over [0, m] the areas differ by at most
    sum_i (width of interval i inside [0, m]) x (its sPRO rise), divided by m. That bound is the
    tolerance, computed from the refined curve, and is itself checked to be small."""
    images = tiny_category(seed, levels)
    report = evaluate_loco_category(images, max_fprs=(0.05, 0.1, 0.3, 1.0))
    passes = MapPasses(images)
    refined = refine_thresholds(passes, start_thresholds(passes).thresholds)
    got_fpr, got_spro = spro_curve_at(images, refined.thresholds)          # merge bookkeeping vs a fresh pass
    np.testing.assert_allclose(np.stack(curve_of(refined.totals)), np.stack([got_fpr, got_spro]), atol=1e-12)
    exact_thresholds = every_distinct_threshold(images)
    for kind, short in KIND_PAIRS:
        subset = [im for im in images if im.kind in ("good", kind)]
        exact_fpr, exact_spro = brute_curve(subset, exact_thresholds)
        fpr, spro = curve_of(refined.totals, ("good", kind))
        for max_fpr in (0.05, 0.1, 0.3, 1.0):
            value = report["auspro"][str(max_fpr)][short]
            assert value == auc_spro(fpr, spro, max_fpr)
            width = np.clip(fpr[1:], 0, max_fpr) - np.clip(fpr[:-1], 0, max_fpr)
            bound = float(np.sum(width * np.diff(spro))) / max_fpr
            exact = clipped_polyline_area(exact_fpr, exact_spro, max_fpr)
            assert abs(value - exact) <= bound + 1e-12, (kind, max_fpr, value, exact, bound)
            assert bound < (0.2 if max_fpr < 0.3 else 0.05), (kind, max_fpr, bound)


def test_refinement_step_by_hand():
    thresholds = np.array([3.0, 2.0, 1.0, 0.0])
    spro = np.array([0.0, 0.3, 0.303, 0.483])      # adjacent distances 0.5, 0.005, 0.3
    fpr = np.array([0.0, 0.4, 0.404, 0.644])
    got = refinement_queries(thresholds, spro, fpr, 0.01)
    # 18 extra points to reach 20: round(0.5 / 0.8 * 18) = 11 for the first pair, then the 7 left
    want = np.sort(np.concatenate([np.linspace(3, 2, 2 + 12)[1:-1], np.linspace(1, 0, 2 + 8)[1:-1]]))
    np.testing.assert_array_equal(got, want)
    jump_thresholds, jump_spro = np.array([2.0, 1.0, 0.0]), np.array([0.0, 0.5, 0.5])
    jump_fpr = np.array([0.0, 0.0, 1e-3])
    jump = refinement_queries(jump_thresholds, jump_spro, jump_fpr, 0.01)
    assert jump.size == 0                                       # pure sPRO jump: no triangle area (v2.0 rule)
    # both pairs are 0.05 apart; only the second's triangle 0.5 x 0.05 x 0.0011 exceeds 0.25 x 0.01**2
    slim = refinement_queries(np.array([2.0, 1.0, 0.0]), np.array([0.0, 0.05, 0.1]),
                              np.array([0.0, 0.0001, 0.0012]), 0.01)
    np.testing.assert_array_equal(slim, np.sort(np.linspace(1, 0, 22)[1:-1]))
    older = refinement_queries(jump_thresholds, jump_spro, jump_fpr, 0.01, area_condition=False)
    np.testing.assert_array_equal(older, np.sort(np.linspace(2, 1, 22)[1:-1]))   # 1 + 19 extra points
    steps = np.linspace(0, 1, 152) ** 2                         # 151 intervals, all far apart, growing
    many = refinement_queries(np.arange(152.0)[::-1], steps, steps, 0.001)
    assert many.size == 100 and many.min() > 0.0 and many.max() < 100.0   # only the 100 farthest, 1 each


def test_start_set_official_formula_and_subsample():
    images = tiny_category(seed=4)
    start = start_thresholds(images)
    pooled = np.sort(np.concatenate([im.anomaly_map.ravel() for im in images])).astype(np.float64)
    picks = pooled[np.linspace(0, pooled.size - 1, num=50, endpoint=True, dtype=int)[1:-1]]
    want = np.concatenate([[pooled[-1] + 1e-6], picks[::-1], [pooled[0] - 1e-6]])
    np.testing.assert_array_equal(start.thresholds, want)
    assert start.sampled_scores == pooled.size
    same_size = [LocoImage("good", np.random.default_rng(k).random((6, 9))) for k in range(5)]
    for cap in (100, 40):                                       # 40 also cuts earlier images down on the way
        sub = start_thresholds(same_size, max_sampled_scores=cap)
        assert sub.sampled_scores == 5 * (cap // 5)             # official: floor(cap / images) per image
        inner = sub.thresholds[1:-1]
        assert np.isin(inner, np.concatenate([im.anomaly_map.ravel() for im in same_size])).all()
        assert (np.diff(sub.thresholds) < 0).all()
        again = start_thresholds(same_size, max_sampled_scores=cap)                # the draw is seeded
        np.testing.assert_array_equal(sub.thresholds, again.thresholds)


def test_image_auroc_against_sklearn_and_official_ties():
    rng = np.random.default_rng(5)
    scores = {"good": [0.1, 0.35, 0.2, 0.6], "logical_anomalies": [0.5, 0.3, 0.9],
              "structural_anomalies": [0.15, 0.7, 0.8, 0.4, 0.05]}
    images = [LocoImage(kind, rng.random((4, 6)).astype(np.float32),
                        () if kind == "good" else (channel(rect((4, 6), 0, 0, 2, 2), 1.0, True),), score=s)
              for kind, values in scores.items() for s in values]
    report = evaluate_loco_category(images)
    want = {}
    for kind, short in KIND_PAIRS:
        labels = [0] * 4 + [1] * len(scores[kind])
        want[short] = roc_auc_score(labels, scores["good"] + scores[kind])
        assert report["image_auroc"][short] == pytest.approx(want[short], abs=1e-15)
        assert report["image_auroc_official_script"][short] == pytest.approx(want[short], abs=1e-15)
    mean = (want["logical"] + want["structural"]) / 2
    assert report["image_auroc"]["mean"] == pytest.approx(mean, abs=1e-15)
    assert official_script_image_auroc([0.5], [0.5]) == 1.0           # tie: the good image is ranked first
    assert roc_auc_score([0, 1], [0.5, 0.5]) == 0.5
    # good [1, 1], anomalous [1]: official points (0, 0), (0.5, 1), (1, 1) -> 0.25 + 0.5
    assert official_script_image_auroc([1.0, 1.0], [1.0]) == 0.75
    maxima = evaluate_loco_category([LocoImage(im.kind, im.anomaly_map, im.channels) for im in images])
    for kind, short in KIND_PAIRS:                                    # no score given: max of the map
        good = [float(im.anomaly_map.max()) for im in images if im.kind == "good"]
        anomalous = [float(im.anomaly_map.max()) for im in images if im.kind == kind]
        assert maxima["image_auroc"][short] == pytest.approx(
            roc_auc_score([0] * len(good) + [1] * len(anomalous), good + anomalous), abs=1e-15)


def test_undefined_metrics_have_reasons():
    images = tiny_category(seed=6)
    no_logical = evaluate_loco_category([im for im in images if im.kind != "logical_anomalies"])
    assert no_logical["image_auroc"]["logical"] is None and no_logical["image_auroc"]["mean"] is None
    assert no_logical["auspro"]["0.05"]["logical"] is None and no_logical["auspro"]["0.05"]["mean"] is None
    assert no_logical["auspro"]["0.05"]["structural"] is not None and no_logical["curves"]["logical"] is None
    assert "no logical_anomalies images" in no_logical["undefined"]["auspro.0.05.logical"]
    assert "image_auroc.mean" in no_logical["undefined"]
    for subset in ([im for im in images if im.kind != "good"], [im for im in images if im.kind == "good"]):
        report = evaluate_loco_category(subset)
        assert all(report["image_auroc"][k] is None for k in ("logical", "structural", "mean"))
        assert all(v is None for table in report["auspro"].values() for v in table.values())
        assert len(report["undefined"]) == 3 * (2 + 4) and report["thresholds"]["passes_over_maps"] == 1
    assert "no good images" in evaluate_loco_category(images[3:])["undefined"]["image_auroc.logical"]


def test_streaming_source_reads_maps_in_bounded_passes():
    images = tiny_category(seed=7)
    calls = {"passes": 0, "maps": 0}

    def fresh_iterator():
        calls["passes"] += 1
        for image in images:
            calls["maps"] += 1
            yield image

    report = evaluate_loco_category(fresh_iterator, max_curve_points=16)
    assert report == evaluate_loco_category(images, max_curve_points=16)
    passes = report["thresholds"]["passes_over_maps"]
    assert passes == calls["passes"] == 2 + report["thresholds"]["refinement_steps"] and 3 <= passes <= 12
    assert calls["maps"] == passes * len(images)
    assert json.loads(json.dumps(report)) == report
    for _, short in KIND_PAIRS:
        curve = report["curves"][short]
        assert len(curve["fpr"]) <= 16 and curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0
    with pytest.raises(TypeError, match="one-shot iterator"):
        evaluate_loco_category(iter(images))
    shrinking = iter([images, images[:3]])
    with pytest.raises(ValueError, match="same number|same images"):
        evaluate_loco_category(lambda: next(shrinking))


def test_peak_memory_does_not_grow_with_images():
    def category(n):
        def fresh():
            for k in range(n):
                rng = np.random.default_rng(k)
                kind = ("good", "logical_anomalies", "structural_anomalies")[k % 3]
                chans = () if kind == "good" else (channel(rect((96, 128), 10, 10, 20, 30), 1.0, True),)
                yield LocoImage(kind, rng.random((96, 128)).astype(np.float32), chans)
        return fresh

    peaks = []
    for n in (6, 30):
        tracemalloc.start()
        evaluate_loco_category(category(n), max_sampled_scores=20_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.25, peaks                        # 5x the images, about the same peak


def test_bad_input_names_the_image():
    good = np.zeros((4, 4), np.float32)
    mask = rect((4, 4), 0, 0, 1, 1)
    cases = [
        (LocoImage("broken", good, name="a.tiff"), "kind 'broken'"),
        (LocoImage("good", good, (DefectChannel(mask, 1),), name="a.tiff"), "good image must have no"),
        (LocoImage("logical_anomalies", good, name="a.tiff"), "at least one defect channel"),
        (LocoImage("logical_anomalies", good, (DefectChannel(rect((4, 5), 0, 0, 1, 1), 1),), name="a.tiff"),
         "mask must be a bool array"),
        (LocoImage("logical_anomalies", good, (DefectChannel(mask, 0),), name="a.tiff"), "saturation area"),
        (LocoImage("logical_anomalies", good, (DefectChannel(mask, 2),), name="a.tiff"), "saturation area"),
        (LocoImage("good", np.full((4, 4), np.nan), name="a.tiff"), "NaN"),
    ]
    for image, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            evaluate_loco_category([LocoImage("good", good), image])
        assert "image #1 (a.tiff)" in str(error.value)
