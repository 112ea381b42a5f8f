"""SAM-LAD's equations (METHODS.md §4) against independent computations: brute force, explicit matrices, cv2,
scipy's assignment solver, an exp-domain Sinkhorn, and POT / faiss where installed. Small arrays only."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tasks.sam_lad import assemble, bank, dcga, objects


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- §4.2 bank, coreset, Eq. 2 reference search

def _bruteforce_kcenter(points: np.ndarray, count: int, start: int) -> list[int]:
    dist = cdist(points.astype(np.float64), points.astype(np.float64))   # full Z x Z matrix
    chosen = [start]
    while len(chosen) < count:
        cover = {i: dist[i, chosen].min() for i in range(len(points)) if i not in chosen}
        farthest = max(cover.values())
        chosen.append(min(i for i, d in cover.items() if d == farthest))   # lower index wins ties
    return chosen


def test_kcenter_greedy_coreset_equals_bruteforce_farthest_point():
    """§4.2 optional coreset: PatchCore's greedy k-center against an O(Z^2) brute force (duplicates included)."""
    rng = np.random.default_rng(3)
    points = rng.normal(size=(30, 6)).astype(np.float32)
    points[7] = points[2]                     # an exact duplicate: picked only after everything else
    for seed in (0, 1, 5):
        start = int(np.random.default_rng(seed).integers(len(points)))
        picked = bank.kcenter_greedy(points, 12, seed=seed)
        assert picked.dtype == np.int64
        assert picked.tolist() == _bruteforce_kcenter(points, 12, start)
    full = bank.kcenter_greedy(points, 30, seed=0)
    assert sorted(full.tolist()) == list(range(30))
    assert bank.kcenter_greedy(points, 0).shape == (0,)
    with pytest.raises(ValueError, match="count"):
        bank.kcenter_greedy(points, 31)


def _bruteforce_knn(bank_rows, queries, k, exclude):
    dist = np.sqrt(((queries[:, None, :].astype(np.float64) - bank_rows[None].astype(np.float64)) ** 2).sum(-1))
    out_idx, out_dist = [], []
    for q, row in enumerate(dist):
        pairs = sorted((d, i) for i, d in enumerate(row) if i != exclude[q])[:k]
        out_idx.append([i for _, i in pairs])
        out_dist.append([d for d, _ in pairs])
    return np.array(out_idx), np.array(out_dist)


def test_nearest_references_eq2_argmin_equals_bruteforce_with_ties_and_exclusion():
    """Eq. 2's set of the k nearest templates (L2 on flattened maps), ascending, ties to the lower bank index."""
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(60, 40)).astype(np.float32)
    queries = rng.normal(size=(6, 40)).astype(np.float32)
    templates[41] = templates[5]            # tie pair
    queries[1] = templates[5]               # a query identical to bank entries 5 and 41: distance 0, not skipped
    tie_point = queries[2] + 0.01
    templates[10:30] = tie_point            # a tie group of 20, wider than the fast search's 12 candidates
    exclude = np.array([-1, -1, -1, 3, -1, 59])
    for backend in ("numpy", "auto"):
        for k in (1, 3, 5):
            idx, dist = bank.nearest_references(templates, queries, k, exclude=exclude, backend=backend)
            want_idx, want_dist = _bruteforce_knn(templates, queries, k, exclude)
            assert idx.dtype == np.int64 and dist.dtype == np.float32 and idx.shape == (6, k)
            np.testing.assert_array_equal(idx, want_idx)
            np.testing.assert_allclose(dist, want_dist, rtol=1e-6, atol=1e-6)
    idx, dist = bank.nearest_references(templates, queries, 2)
    assert idx[1].tolist() == [5, 41] and dist[1, 0] == 0.0
    assert idx[2].tolist() == [10, 11]
    with pytest.raises(ValueError, match="k must be"):
        bank.nearest_references(templates, queries, 61)
    with pytest.raises(ValueError, match="k must be"):
        bank.nearest_references(templates, queries, 60, exclude=exclude)
    small = templates[:5]
    idx, _ = bank.nearest_references(small, queries, 5)            # k = Z: every entry, brute-force path
    np.testing.assert_array_equal(idx, _bruteforce_knn(small, queries, 5, [-1] * 6)[0])


def test_nearest_references_redoes_queries_whose_tie_group_the_fast_search_cut(monkeypatch):
    """Eq. 2 search determinism: a fast search that returns the wrong members of a tie group (highest indices
    first) is caught, and the query is redone by brute force (lowest indices win)."""
    rng = np.random.default_rng(2)
    templates = rng.normal(size=(50, 16)).astype(np.float32)
    templates[5:45] = templates[0] + 0.5           # 40 equidistant entries from query 0
    queries = np.stack([templates[0], rng.normal(size=16).astype(np.float32)])

    def highest_index_first(bank_rows, query_rows, count):
        sq = ((query_rows[:, None].astype(np.float64) - bank_rows[None]) ** 2).sum(-1)
        order = np.lexsort((-np.arange(len(bank_rows))[None].repeat(len(query_rows), 0), sq), axis=1)
        return order[:, :count]

    monkeypatch.setattr(bank, "_gemm_candidates", highest_index_first)
    idx, _ = bank.nearest_references(templates, queries, 3, backend="numpy")
    np.testing.assert_array_equal(idx, _bruteforce_knn(templates, queries, 3, [-1, -1])[0])
    assert idx[0].tolist() == [0, 5, 6]


def test_nearest_references_faiss_backend_equals_bruteforce():
    """Eq. 2 search through faiss.IndexFlatL2 (when installed) gives the brute-force order."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    templates = rng.normal(size=(80, 32)).astype(np.float32)
    templates[50:70] = templates[3]
    queries = np.concatenate([rng.normal(size=(4, 32)), templates[3:4] + 1e-3]).astype(np.float32)
    idx, dist = bank.nearest_references(templates, queries, 4, backend="faiss")
    want_idx, want_dist = _bruteforce_knn(templates, queries, 4, [-1] * 5)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-5, atol=1e-5)


def test_random_single_reference_eq2_seeded_uniform_pick_among_k():
    """Eq. 2 literally: t drawn at random among the k nearest; seeded, one of the row's k, every column drawn."""
    indices = np.arange(400 * 3).reshape(400, 3)
    picked = bank.random_single_reference(indices, seed=7)
    assert picked.shape == (400, 1) and picked.dtype == np.int64
    assert all(picked[q, 0] in indices[q] for q in range(400))
    np.testing.assert_array_equal(picked, bank.random_single_reference(indices, seed=7))
    assert not np.array_equal(picked, bank.random_single_reference(indices, seed=8))
    columns = picked[:, 0] - indices[:, 0]
    counts = np.bincount(columns, minlength=3)
    assert counts.min() > 100                # uniform: about 133 each


# ---------------------------------------------------------------- §4.5 object maps, §4.6 DCGA

def _masks(rng, count, size):
    masks = np.zeros((count, *size), bool)
    for m in range(count):
        y, x = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
        masks[m, y:y + rng.integers(4, 12), x:x + rng.integers(4, 12)] = True
    return masks


def test_object_feature_maps_4_5_bilinear_mask_times_features():
    """§4.5: each mask resized bilinearly (cv2.INTER_LINEAR sampling) to h x w, times the features channel-wise."""
    rng = np.random.default_rng(0)
    masks = _masks(rng, 3, (40, 56))
    features = rng.normal(size=(5, 10, 14)).astype(np.float32)    # shrink x4
    maps = dcga.object_feature_maps(masks, features)
    assert maps.shape == (3, 5, 10, 14) and maps.dtype == np.float32
    for m in range(3):
        weight = cv2.resize(masks[m].astype(np.float32), (14, 10), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(maps[m], weight[None] * features, atol=1e-5)
    up = dcga.resize_masks(masks[:, ::4, ::4], (40, 56))            # grow x4 as well
    for m in range(3):
        want = cv2.resize(masks[m, ::4, ::4].astype(np.float32), (56, 40), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(up[m], want, atol=1e-5)


def test_pooled_object_features_4_6_point1_equal_pooling_the_full_array():
    """§4.6 point 1: GMP/GAP per object, inside the mask or over the frame, equals pooling (M, C, h, w) explicitly."""
    rng = np.random.default_rng(1)
    masks = _masks(rng, 4, (32, 32))
    masks[3] = False
    masks[3, 1, 1] = True          # shrinks to a weight of 0.25 at one cell only
    features = (rng.normal(size=(6, 8, 8)) - 1.0).astype(np.float32)   # mostly negative: zeros would win a max
    full = dcga.object_feature_maps(masks, features)
    weights = dcga.resize_masks(masks, (8, 8))
    for pool, reduce in (("max", np.max), ("mean", np.mean)):
        frame = dcga.pooled_object_features(masks, features, pool=pool, inside_mask=False)
        inside = dcga.pooled_object_features(masks, features, pool=pool, inside_mask=True)
        for m in range(4):
            np.testing.assert_allclose(frame[m], reduce(full[m].reshape(6, -1), axis=1), atol=1e-6)
            cells = [(y, x) for y in range(8) for x in range(8) if weights[m, y, x] > 0]
            want = reduce(np.array([[full[m, c, y, x] for y, x in cells] for c in range(6)]), axis=1)
            np.testing.assert_allclose(inside[m], want, atol=1e-6)
        assert not np.allclose(frame, inside)
    assert np.count_nonzero(weights[3]) == 1
    vanishing = np.zeros((2, 32, 32), bool)
    vanishing[1, 0, 0] = True      # no sample of the x4 shrink reads pixel (0, 0): the weight map is all zero
    assert np.all(dcga.resize_masks(vanishing, (8, 8)) == 0)
    assert np.all(dcga.pooled_object_features(vanishing, features, "max", True) == 0)


def test_dcga_4_6_intermediates_equal_explicit_channel_and_object_graph_matrices():
    """§4.6: A = A0 A1 with A0 = I_C and A1 = diag(softmax(w f)); G = f A; gate = sigmoid(f ⊙ G); A2 row-normalised
    clamped cosines with zero diagonal; Y_literal = A2 gate; Y_residual = f ⊙ gate + A2 (f ⊙ gate)."""
    rng = np.random.default_rng(2)
    f_in = rng.normal(size=(4, 5)).astype(np.float32)
    f_in[3] = -f_in[0]                         # a negative cosine, clamped to 0
    w = 1.7
    parts = dcga.dcga_parts(f_in, w)
    f = f_in.astype(np.float64)
    m_count, channels = f.shape
    gates, attended = [], []
    for i in range(m_count):
        a0 = np.eye(channels)
        e = np.exp(w * f[i])
        a1 = np.diag(e / e.sum())
        a = a0 @ a1                                           # C x C channel graph
        g = f[i] @ a
        attended.append(g)
        gates.append(_sigmoid(f[i] * g))
        np.testing.assert_allclose(parts.channel_weights[i], np.diag(a), atol=1e-12)
    np.testing.assert_allclose(parts.attended, np.array(attended), atol=1e-12)
    np.testing.assert_allclose(parts.gate, np.array(gates), atol=1e-12)
    a2 = np.zeros((m_count, m_count))
    for i in range(m_count):
        for j in range(m_count):
            if i != j:
                a2[i, j] = max(0.0, f[i] @ f[j] / np.linalg.norm(f[i]) / np.linalg.norm(f[j]))
        a2[i] /= a2[i].sum()
    np.testing.assert_allclose(parts.object_graph, a2, atol=1e-12)
    gate = np.array(gates)
    literal = a2 @ gate
    residual = f * gate + a2 @ (f * gate)
    np.testing.assert_allclose(dcga.dcga(f_in, w, "literal"), _unit_rows(literal), atol=1e-6)
    np.testing.assert_allclose(dcga.dcga(f_in, w, "residual"), _unit_rows(residual), atol=1e-6)


def test_dcga_4_6_zero_row_object_graph_single_object_and_opposed_pair():
    """§4.6 A2 rows with zero sum (M = 1; two objects with negative cosine) carry no messages: literal -> zero
    descriptor, residual -> the object's own gated vector."""
    rng = np.random.default_rng(3)
    single = rng.normal(size=(1, 6)).astype(np.float32)
    parts = dcga.dcga_parts(single)
    assert parts.object_graph.tolist() == [[0.0]]
    assert np.all(dcga.dcga(single, mode="literal") == 0)
    own = single[0] * _sigmoid(single[0] * single[0] * parts.channel_weights[0])
    np.testing.assert_allclose(dcga.dcga(single, mode="residual")[0], own / np.linalg.norm(own), atol=1e-6)
    pair = np.stack([single[0], -single[0]])
    assert np.all(dcga.dcga_parts(pair).object_graph == 0)
    assert np.all(dcga.dcga(pair, mode="literal") == 0)


def test_dcga_4_6_gmp_gap_modes_are_the_normalised_pooled_vectors():
    """§4.6 fallbacks (paper's GMP / GAP ablation rows): descriptor = pooled vector / its norm."""
    f_in = np.random.default_rng(4).normal(size=(3, 7)).astype(np.float32)
    for mode in ("gmp", "gap"):
        np.testing.assert_allclose(dcga.dcga(f_in, mode=mode), _unit_rows(f_in.astype(np.float64)), atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        dcga.dcga(f_in, mode="other")


# ---------------------------------------------------------------- Eq. 13-16, missing objects, upsampling

def test_assemble_eq13_15_full_map_and_eq16_unmatched_only():
    """Eq. 13-15: M_final = sum over matched + sum over unmatched (= all); Eq. 16: unmatched objects only."""
    rng = np.random.default_rng(13)
    maps = rng.uniform(size=(5, 6, 7)).astype(np.float32)
    unmatched = np.array([True, False, False, True, False])
    m_matching = maps[1] + maps[2] + maps[4]
    m_non_matching = maps[0] + maps[3]
    np.testing.assert_allclose(assemble.assemble_map(maps, unmatched, "full"), m_matching + m_non_matching,
                               rtol=1e-6)
    np.testing.assert_allclose(assemble.assemble_map(maps, unmatched, "full"), maps.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(assemble.assemble_map(maps, unmatched, "unmatched_only"), m_non_matching, rtol=1e-6)
    assert np.all(assemble.assemble_map(maps, np.zeros(5, bool), "unmatched_only") == 0)
    assert assemble.assemble_map(np.zeros((0, 6, 7), np.float32), np.zeros(0, bool)).shape == (6, 7)


def test_missing_object_maps_dustbin_weighted_and_averaged_over_references():
    """anomflow's missing-object term: unmatched reference objects add score_map x dustbin mass; mean over k."""
    rng = np.random.default_rng(14)
    score_maps = rng.uniform(size=(3, 4, 5)).astype(np.float32)
    dustbin = np.array([0.9, 0.05, 0.6])
    matched = np.array([False, True, False])
    got = assemble.missing_object_maps(dustbin, matched, score_maps)
    np.testing.assert_allclose(got, 0.9 * score_maps[0] + 0.6 * score_maps[2], rtol=1e-6)
    other = assemble.missing_object_maps(dustbin, np.ones(3, bool), score_maps)
    assert np.all(other == 0)
    np.testing.assert_allclose(assemble.combine_missing_over_references([got, other]), got / 2, rtol=1e-6)


def test_upsample_map_bilinear_equals_cv2_and_blur_equals_explicit_gaussian_convolution():
    """§4.8 post-processing: bilinear to a non-square image size (sigma 0 == cv2.resize INTER_LINEAR), then a
    Gaussian blur equal to an explicit separable convolution with reflected borders; image score = max."""
    rng = np.random.default_rng(15)
    small = rng.uniform(size=(8, 6)).astype(np.float32)
    plain = assemble.upsample_map(small, (37, 53), sigma=0.0)
    assert plain.shape == (37, 53) and plain.dtype == np.float32
    np.testing.assert_allclose(plain, cv2.resize(small, (53, 37), interpolation=cv2.INTER_LINEAR), atol=1e-5)
    shrunk = assemble.upsample_map(rng.uniform(size=(20, 30)).astype(np.float32), (7, 11), sigma=0.0)
    assert shrunk.shape == (7, 11)

    sigma = 1.5
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(plain.astype(np.float64), radius, mode="symmetric")
    rows = np.array([[padded[y + radius, x:x + 2 * radius + 1] @ taps for x in range(53)] for y in range(37)])
    padded_rows = np.pad(rows, ((radius, radius), (0, 0)), mode="symmetric")
    want = np.array([[padded_rows[y:y + 2 * radius + 1, x] @ taps for x in range(53)] for y in range(37)])
    blurred = assemble.upsample_map(small, (37, 53), sigma=sigma)
    np.testing.assert_allclose(blurred, want, atol=1e-5)
    assert np.isclose(assemble.image_score(blurred), want.max(), atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        assemble.upsample_map(small, (37, 53), sigma=-1.0)


# ---------------------------------------------------------------- §4.3 area filter
def test_area_filter_4_3_keeps_masks_in_range_largest_first_in_index_order():
    areas = np.array([0.50, 0.001, 0.20, 0.20, 0.05, 0.30, 0.0])
    np.testing.assert_array_equal(objects.kept_objects(areas, 0.01, 0.4, 10), [2, 3, 4, 5])   # 0.5, 0.001, 0 out
    np.testing.assert_array_equal(objects.kept_objects(areas, 0.01, 0.4, 2), [2, 5])   # 0.30 and the first 0.20
    np.testing.assert_array_equal(objects.kept_objects(areas, 0.0, 1.0, 3), [0, 2, 5])
    assert objects.kept_objects(np.zeros(0), 0.0, 1.0, 5).shape == (0,)
    brute = sorted(sorted((i for i, a in enumerate(areas) if 0.01 <= a <= 0.4), key=lambda i: (-areas[i], i))[:3])
    np.testing.assert_array_equal(objects.kept_objects(areas, 0.01, 0.4, 3), brute)
