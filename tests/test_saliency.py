"""SAA+ saliency prompt: exact values on hand-built features, brute-force references, dispatch and rescoring."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.saa_plus.saliency import (multi_instance_saliency, resize_masks_nearest, rescore, saliency_map,
                                     saliency_mode, single_instance_saliency, upsample_saliency)

U = np.array([1.0, 0.0, 0.0])
V = np.array([0.6, 0.8, 0.0])  # cos(U, V) = 0.6 -> d = 0.2
W = np.array([0.0, 0.0, 1.0])  # orthogonal to U and V -> d = 0.5


def _grid(h: int, w: int, base: np.ndarray, odd: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """C x h x w features: ``base`` everywhere except the given locations."""
    f = np.tile(base[:, None, None], (1, h, w)).astype(np.float32)
    for (y, x), vec in odd.items():
        f[:, y, x] = vec
    return f


def _unit_random(c: int, h: int, w: int, seed: int) -> np.ndarray:
    f = np.random.default_rng(seed).normal(size=(c, h, w))
    return f / np.linalg.norm(f, axis=0, keepdims=True)


# ------------------------------------------------------------------------------------------ single-instance
@pytest.mark.parametrize("k, odd_value, normal_value", [(1, 0.2, 0.2), (3, 0.2, 0.2 / 3), (15, 0.2, 0.2 / 15)])
def test_single_farthest_one_odd_location(k, odd_value, normal_value):
    f = _grid(4, 4, U, {(1, 2): V})
    s = single_instance_saliency(f, k=k)
    assert s.shape == (4, 4) and s.dtype == np.float32
    assert s[1, 2] == pytest.approx(odd_value, abs=1e-6)
    others = np.delete(s.reshape(-1), 1 * 4 + 2)
    np.testing.assert_allclose(others, normal_value, atol=1e-6)
    assert s[1, 2] == s.max()


@pytest.mark.parametrize("k, normal_value", [(1, 0.0), (3, 0.0), (14, 0.0), (15, 0.2 / 15)])
def test_single_nearest_differs_from_farthest(k, normal_value):
    f = _grid(4, 4, U, {(1, 2): V})
    s = single_instance_saliency(f, k=k, neighbours="nearest")
    # the odd location's nearest neighbours are all at 0.2; a normal one's are its 14 twins at 0 (self excluded)
    assert s[1, 2] == pytest.approx(0.2, abs=1e-6)
    np.testing.assert_allclose(np.delete(s.reshape(-1), 6), normal_value, atol=1e-6)
    if k < 15:
        assert not np.allclose(s, single_instance_saliency(f, k=k, neighbours="farthest"))


def test_single_k_clipped_to_other_locations():
    f = _grid(4, 4, U, {(1, 2): V})
    for neighbours in ("farthest", "nearest"):
        np.testing.assert_array_equal(single_instance_saliency(f, 400, neighbours),
                                      single_instance_saliency(f, 15, neighbours))
    assert single_instance_saliency(f[:, :1, :1], 400).tolist() == [[0.0]]
    with pytest.raises(ValueError):
        single_instance_saliency(f, 0)
    with pytest.raises(ValueError):
        single_instance_saliency(f, 3, "closest")


@pytest.mark.parametrize("neighbours", ["farthest", "nearest"])
@pytest.mark.parametrize("k", [1, 4, 9, 14, 50])
def test_single_matches_brute_force(neighbours, k):
    f = _unit_random(6, 3, 5, seed=k)
    flat = f.reshape(6, -1)
    n = flat.shape[1]
    want = np.zeros(n)
    for p in range(n):
        d = sorted(0.5 * (1 - float(flat[:, p] @ flat[:, q])) for q in range(n) if q != p)
        kk = min(k, n - 1)
        want[p] = np.mean(d[-kk:] if neighbours == "farthest" else d[:kk])
    got = single_instance_saliency(f.astype(np.float32), k, neighbours)
    np.testing.assert_allclose(got.reshape(-1), want, atol=1e-6)


def test_single_chunked_rows_equal_one_block(monkeypatch):
    import tasks.saa_plus.saliency as mod

    f = _unit_random(8, 6, 7, seed=3).astype(np.float32)
    whole = single_instance_saliency(f, 10)
    monkeypatch.setattr(mod, "_BLOCK_ELEMS", 50)  # one row per block
    np.testing.assert_allclose(single_instance_saliency(f, 10), whole, atol=1e-7)


# ------------------------------------------------------------------------------------------- multi-instance
def _two_objects() -> tuple[np.ndarray, np.ndarray]:
    """4 x 6 grid; object A = rows 0-1, cols 0-1; object B = rows 0-1, cols 3-4; rest of the grid is outside."""
    f = _grid(4, 6, U, {(1, 1): V, (3, 5): W, (2, 2): W})
    masks = np.zeros((2, 4, 6), bool)
    masks[0, :2, :2] = True
    masks[1, :2, 3:5] = True
    return f, masks


def test_multi_unmatched_feature_scores_exactly():
    f, masks = _two_objects()
    s = multi_instance_saliency(f, masks)
    assert s.shape == (4, 6) and s.dtype == np.float32
    want = np.zeros((4, 6))
    want[1, 1] = 0.2  # V has no twin in B: 0.5 * (1 - cos(V, U))
    np.testing.assert_allclose(s, want, atol=1e-6)
    # the odd vectors outside both masks are neither scored nor used as "other" locations
    g = f.copy()
    g[:, 2:, :] = V[:, None, None]
    np.testing.assert_allclose(multi_instance_saliency(g, masks), want, atol=1e-6)


def test_multi_chunked_blocks_equal_one_block(monkeypatch):
    import tasks.saa_plus.saliency as mod

    f = _unit_random(5, 8, 9, seed=1).astype(np.float32)
    rng = np.random.default_rng(2)
    masks = rng.random((3, 8, 9)) < 0.4
    whole = multi_instance_saliency(f, masks)
    monkeypatch.setattr(mod, "_BLOCK_ELEMS", 4)
    np.testing.assert_allclose(multi_instance_saliency(f, masks), whole, atol=1e-7)


def _multi_reference(f: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The official algorithm with plain loops: zero object i's features, take the others' locations, max cosine."""
    c, h, w = f.shape
    maps = []
    for i in range(len(masks)):
        zeroed = f.copy()
        zeroed[:, masks[i]] = 0.0
        others = [zeroed[:, y, x] for j in range(len(masks)) if j != i
                  for y in range(h) for x in range(w) if masks[j, y, x]]
        m = np.zeros((h, w))
        for y in range(h):
            for x in range(w):
                if masks[i, y, x]:
                    m[y, x] = 0.5 * (1 - max(float(f[:, y, x] @ o) for o in others))
        maps.append(m)
    return np.max(maps, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_multi_matches_brute_force_with_overlaps(seed):
    rng = np.random.default_rng(seed)
    f = _unit_random(4, 3, 5, seed=100 + seed)
    masks = rng.random((2 + seed % 3, 3, 5)) < 0.5
    masks[0, 0, 0] = masks[1, 2, 4] = True  # at least two non-empty masks
    if seed == 5:
        masks[1] = masks[0]  # identical duplicates: the others are all zeroed -> 0.5
    got = multi_instance_saliency(f.astype(np.float32), masks)
    np.testing.assert_allclose(got, _multi_reference(f, masks), atol=1e-6)


def test_multi_overlap_counts_zeroed_features():
    f = _grid(2, 3, U, {})
    masks = np.zeros((2, 2, 3), bool)
    masks[0, :, :2] = True
    masks[1, :, 1:] = True  # column 1 is shared; every feature is U
    s = multi_instance_saliency(f, masks)
    # A's only non-shared "other" locations (column 2) carry U -> 0; column 1 holds U too -> 0
    np.testing.assert_allclose(s, 0.0, atol=1e-6)
    masks[1] = masks[0]
    np.testing.assert_allclose(multi_instance_saliency(f, masks), np.where(masks[0], 0.5, 0.0), atol=1e-6)


def test_multi_needs_two_non_empty_masks():
    f, masks = _two_objects()
    masks[1] = False
    with pytest.raises(ValueError):
        multi_instance_saliency(f, masks)
    with pytest.raises(ValueError):
        multi_instance_saliency(f, masks[:, :2])


# --------------------------------------------------------------------------------------------------- dispatch
def test_saliency_map_dispatch_and_fallback():
    f, masks = _two_objects()
    single = single_instance_saliency(f, 5)
    s, mode = saliency_map(f, masks, 2, k=5)
    assert mode == "multi"
    np.testing.assert_array_equal(s, multi_instance_saliency(f, masks))
    cases = [(masks, 1, "single"), (None, 3, "single-fallback"), (masks[:0], 2, "single-fallback"),
             (np.stack([masks[0], np.zeros_like(masks[0])]), 2, "single-fallback"),
             (np.zeros_like(masks), 2, "single-fallback")]
    for objs, count, want in cases:
        s, mode = saliency_map(f, objs, count, k=5)
        assert mode == want == saliency_mode(objs, count)
        np.testing.assert_array_equal(s, single)
    s, mode = saliency_map(f, None, 1, k=5, neighbours="nearest")
    np.testing.assert_array_equal(s, single_instance_saliency(f, 5, "nearest"))


def test_resize_and_upsample_helpers():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, 6, 6] = True  # cv2 nearest samples source rows/cols 0, 2, 4, 6
    small = resize_masks_nearest(masks, 4)
    assert small.shape == (2, 4, 4) and small.dtype == bool
    assert small[0].tolist() == [[True, True, False, False]] * 2 + [[False] * 4] * 2
    assert small[1].sum() == 1 and small[1, 3, 3]
    assert resize_masks_nearest(masks[:0], 4).shape == (0, 4, 4)
    up = upsample_saliency(np.full((4, 4), 0.25, np.float32), (10, 6))
    assert up.shape == (10, 6) and up.dtype == np.float32
    np.testing.assert_allclose(up, 0.25)


# ---------------------------------------------------------------------------------------------------- rescore
def test_rescore_exact_values():
    sal = np.array([[0.0, 0.1], [0.2, 0.3]], np.float32)
    masks = np.zeros((3, 2, 2), bool)
    masks[0, 0, :] = True  # mean 0.05
    masks[1, 1, 1] = True  # mean 0.3
    scores = np.array([0.5, 0.4, 0.9], np.float32)  # mask 2 is empty: factor 1
    out = rescore(scores, masks, sal)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.5 * np.exp(0.15), 0.4 * np.exp(0.9), 0.9], rtol=1e-6)
    np.testing.assert_allclose(rescore(scores.astype(np.float64), masks, sal, scale=1.0),
                               [0.5 * np.exp(0.05), 0.4 * np.exp(0.3), 0.9], rtol=1e-6)
    assert rescore(scores[:0], masks[:0], sal).shape == (0,)
    with pytest.raises(ValueError):
        rescore(scores, masks[:, :1], sal)
