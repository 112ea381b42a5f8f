"""SAM-LAD (METHODS.md §4.7-4.8): OMM (Sinkhorn with a dustbin, the matching rule) and AMM (Woodbury) against
independent computations: an exp-domain Sinkhorn, POT, scipy's assignment solver, explicit inverses."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from tasks.sam_lad import amm, omm


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- §4.7 OMM

def test_score_matrix_eq10_inner_products():
    """Eq. 10: S_ij = <d_i^M, d_j^N>."""
    rng = np.random.default_rng(5)
    q, r = _unit_rows(rng.normal(size=(3, 8))), _unit_rows(rng.normal(size=(4, 8)))
    s = omm.score_matrix(q.astype(np.float32), r.astype(np.float32))
    want = np.array([[sum(q[i, c] * r[j, c] for c in range(8)) for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(s, want, atol=1e-6)


def _exp_domain_sinkhorn(scores, z, iterations):
    """The same transport with scaling vectors in the probability domain (Sinkhorn-Knopp)."""
    m, n = scores.shape
    kernel = np.exp(np.block([[scores, np.full((m, 1), z)], [np.full((1, n), z), np.array([[z]])]]))
    a = np.concatenate([np.ones(m), [n]]) / (m + n)
    b = np.concatenate([np.ones(n), [m]]) / (m + n)
    u, v = np.ones(m + 1), np.ones(n + 1)
    for _ in range(iterations):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :] * (m + n)


def test_log_sinkhorn_superglue_ot_equals_exp_domain_scaling_and_marginals():
    """§4.7 SuperGlue's log-domain Sinkhorn with dustbin == probability-domain Sinkhorn-Knopp, and its marginals:
    real rows/columns sum to 1, the dustbin row to N, the dustbin column to M (after the (M+N) scaling)."""
    rng = np.random.default_rng(6)
    for m, n, z in ((4, 6, 0.5), (7, 3, 1.0), (1, 1, -0.3)):
        scores = rng.uniform(-1, 1, size=(m, n))
        for iterations in (1, 5, 100):
            log_p = omm.log_sinkhorn_with_dustbin(scores, z, iterations)
            assert log_p.shape == (m + 1, n + 1)
            np.testing.assert_allclose(np.exp(log_p), _exp_domain_sinkhorn(scores, z, iterations), rtol=1e-10)
        p = np.exp(omm.log_sinkhorn_with_dustbin(scores, z, 500))
        np.testing.assert_allclose(p.sum(axis=1), np.concatenate([np.ones(m), [n]]), atol=1e-8)
        np.testing.assert_allclose(p.sum(axis=0), np.concatenate([np.ones(n), [m]]), atol=1e-8)


def test_log_sinkhorn_empty_sides_send_everything_to_the_dustbin():
    """§4.7 with M = 0 or N = 0: every object's unit mass goes to the dustbin; M = N = 0 gives [[-inf]]."""
    only_refs = np.exp(omm.log_sinkhorn_with_dustbin(np.zeros((0, 3)), 0.5))
    np.testing.assert_allclose(only_refs, [[1.0, 1.0, 1.0, 0.0]], atol=1e-12)
    only_queries = np.exp(omm.log_sinkhorn_with_dustbin(np.zeros((2, 0)), 0.5))
    np.testing.assert_allclose(only_queries, [[1.0], [1.0], [0.0]], atol=1e-12)
    assert omm.log_sinkhorn_with_dustbin(np.zeros((0, 0)), 0.5).tolist() == [[-np.inf]]
    matching = omm.mutual_matches(only_refs)
    assert matching.match_r.tolist() == [-1, -1, -1] and matching.match_q.shape == (0,)
    matching = omm.mutual_matches(only_queries)
    assert matching.nearest_r.tolist() == [-1, -1] and matching.query_dustbin.tolist() == [1.0, 1.0]


def test_log_sinkhorn_matches_pot_sinkhorn_log():
    """§4.7 against POT's log-domain Sinkhorn (reg = 1, cost = -couplings): the same plan up to the (M+N) scale."""
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(7)
    for m, n, z in ((5, 4, 0.5), (3, 8, 1.0)):
        scores = rng.uniform(-1, 1, size=(m, n))
        cost = -np.block([[scores, np.full((m, 1), z)], [np.full((1, n), z), np.array([[z]])]])
        a = np.concatenate([np.ones(m), [n]]) / (m + n)
        b = np.concatenate([np.ones(n), [m]]) / (m + n)
        plan = ot.sinkhorn(a, b, cost, reg=1.0, method="sinkhorn_log", numItermax=100000, stopThr=1e-13)
        ours = np.exp(omm.log_sinkhorn_with_dustbin(scores, z, 2000))
        np.testing.assert_allclose(ours / (m + n), plan, atol=1e-9)


def test_mutual_matches_superglue_rule_on_a_hand_made_plan():
    """§4.7 matching rule: mutual argmax over the real block and P_ij > threshold; nearest_r for everyone."""
    p = np.array([[0.60, 0.10, 0.05, 0.25],    # 0 -> 0, and 0 is column 0's best: match
                  [0.50, 0.30, 0.00, 0.20],    # 1 -> 0, but column 0 prefers 0: unmatched, nearest 0
                  [0.05, 0.15, 0.18, 0.62],    # 2 -> 2 mutual but 0.18 <= 0.2: unmatched
                  [0.10, 0.20, 0.30, 0.00]])   # dustbin row
    matching = omm.mutual_matches(p, threshold=0.2)
    assert matching.match_q.tolist() == [0, -1, -1]
    assert matching.match_r.tolist() == [0, -1, -1]
    assert matching.nearest_r.tolist() == [0, 0, 2]
    assert matching.query_dustbin.tolist() == [0.25, 0.20, 0.62]
    assert matching.reference_dustbin.tolist() == [0.10, 0.20, 0.30]
    assert omm.mutual_matches(p, threshold=0.1).match_q.tolist() == [0, -1, 2]


def _optimal_assignment_with_dustbin(scores, z):
    """Zero-temperature optimum of the dustbin transport: each pair gains S_ij - z over leaving both in the
    dustbin, so maximise sum(max(0, S_ij - z)) over assignments and keep the pairs with S_ij > z."""
    gain = np.maximum(scores - z, 0.0)
    rows, cols = linear_sum_assignment(-gain)
    match_q = np.full(scores.shape[0], -1)
    for i, j in zip(rows, cols):
        if scores[i, j] > z:
            match_q[i] = j
    return match_q


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_mutual_matches_equal_optimal_assignment_extra_and_missing_go_to_dustbin(scale):
    """§4.7 end to end: permuted near-identical objects match as the optimal assignment does; an extra query object
    and a missing reference object go to the dustbin. scale 1 = cosine scores (only 3 objects still pass the
    0.2 threshold there); scale 10 = scores and z divided by a temperature of 0.1, 7 objects."""
    rng = np.random.default_rng(8)
    count = 3 if scale == 1.0 else 7
    refs = _unit_rows(rng.normal(size=(count, 64)))
    z = 0.5
    perm = rng.permutation(count)
    queries = _unit_rows(refs[perm] + 0.02 * rng.normal(size=refs.shape))
    cases = {"same": (queries, perm),
             "extra": (np.vstack([queries, _unit_rows(rng.normal(size=(1, 64)))]), np.append(perm, -1)),
             "missing": (queries[1:], perm[1:])}
    for name, (q, truth) in cases.items():
        scores = omm.score_matrix(q, refs)
        matching = omm.mutual_matches(np.exp(omm.log_sinkhorn_with_dustbin(scores * scale, z * scale)))
        assert matching.match_q.tolist() == _optimal_assignment_with_dustbin(scores, z).tolist(), name
        assert matching.match_q.tolist() == truth.tolist(), name
        for i, j in enumerate(matching.match_q):
            if j >= 0:
                assert matching.match_r[j] == i
        if name == "extra":
            assert matching.query_dustbin[-1] > 0.5
        if name == "missing":
            lost = perm[0]
            assert matching.match_r[lost] == -1 and matching.reference_dustbin[lost] > 0.5


def _matching_with_labels(unmatched_labels):
    match_q = np.where(unmatched_labels, -1, 0).astype(np.int64)
    m = len(unmatched_labels)
    return omm.Matching(match_q=match_q, match_r=np.full(1, -1), nearest_r=np.zeros(m, np.int64),
                        query_dustbin=np.zeros(m), reference_dustbin=np.zeros(1), assignment=np.zeros((m, 1)))


def test_unmatched_across_references_any_all_majority_rules():
    """§4.7 last point: unmatched over k references by any / all / strict majority (tie at even k = matched)."""
    patterns = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], bool)   # (8 objects, 3 refs)
    for k in (1, 2, 3):
        matches = [_matching_with_labels(patterns[:, r]) for r in range(k)]
        counts = patterns[:, :k].sum(axis=1)
        assert omm.unmatched_across_references(matches, "any").tolist() == [c >= 1 for c in counts]
        assert omm.unmatched_across_references(matches, "all").tolist() == [c == k for c in counts]
        assert omm.unmatched_across_references(matches, "majority").tolist() == [c > k / 2 for c in counts]
    two = [_matching_with_labels(np.array([True])), _matching_with_labels(np.array([False]))]
    assert omm.unmatched_across_references(two, "majority").tolist() == [False]      # 1 of 2: a tie
    with pytest.raises(ValueError, match="no matchings"):
        omm.unmatched_across_references([], "any")


# ---------------------------------------------------------------- §4.8 AMM, Eq. 11-12

def _explicit_mahalanobis(query, partners, eps):
    k, channels, positions = partners.shape
    out = np.empty(positions)
    for p in range(positions):
        group = partners[:, :, p].astype(np.float64)
        mu = group.mean(axis=0)
        sigma = eps * np.eye(channels)
        if k > 1:
            sigma += sum(np.outer(g - mu, g - mu) for g in group) / (k - 1)
        x = query[:, p] - mu
        out[p] = np.sqrt(x @ np.linalg.inv(sigma) @ x)
    return out


def test_mahalanobis_eq11_12_woodbury_equals_explicit_inverse():
    """Eq. 11-12: Woodbury scores equal sqrt(x^T inv(Sigma) x) with the explicit C x C Sigma, k = 1..4."""
    rng = np.random.default_rng(9)
    query = rng.normal(size=(5, 9)).astype(np.float32)
    for k in (1, 2, 3, 4):
        partners = rng.normal(size=(k, 5, 9)).astype(np.float32)
        want = _explicit_mahalanobis(query, partners, 0.01)
        for fast in (True, False):
            got = amm.mahalanobis_map(query, partners, eps=0.01, fast_pair=fast)
            assert got.shape == (9,) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5)
    same = amm.mahalanobis_map(query, np.stack([query, query]), eps=0.01)
    assert np.all(same == 0)                       # clamped, never NaN


def test_mahalanobis_k2_closed_form_equals_general_woodbury_and_k1_is_scaled_euclidean():
    """Eq. 11-12 fast paths: the k = 2 closed form == the general Woodbury solve; k = 1 uses Sigma = eps I."""
    rng = np.random.default_rng(10)
    query = rng.normal(size=(48, 300)).astype(np.float32)
    partners = rng.normal(size=(2, 48, 300)).astype(np.float32)
    np.testing.assert_allclose(amm.mahalanobis_map(query, partners, 0.05, fast_pair=True),
                               amm.mahalanobis_map(query, partners, 0.05, fast_pair=False), rtol=1e-6)
    one = amm.mahalanobis_map(query, partners[:1], 0.05)
    np.testing.assert_allclose(one, np.linalg.norm(query - partners[0], axis=0) / np.sqrt(0.05), rtol=1e-6)


def _soft_box(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    mask[y0:y1, x1] = 0.3          # a soft border column below the 0.5 binarisation (x1 < w)
    return mask


def test_object_score_map_frame_alignment_restricted_to_binarised_query_mask():
    """§4.8 frame: per-position Gaussian over the partner object maps (mask x features), times the query mask."""
    rng = np.random.default_rng(11)
    c, h, w = 4, 7, 8
    q_feats = rng.normal(size=(c, h, w)).astype(np.float32)
    q_mask = _soft_box(h, w, 1, 5, 2, 6)
    p_feats = rng.normal(size=(3, c, h, w)).astype(np.float32)
    p_masks = np.stack([_soft_box(h, w, 1, 5, 2, 6), _soft_box(h, w, 2, 6, 2, 6), _soft_box(h, w, 0, 4, 1, 5)])
    got = amm.object_score_map(q_feats, q_mask, p_feats, p_masks, eps=0.01, align="frame")
    want = _explicit_mahalanobis((q_mask * q_feats).reshape(c, -1),
                                 (p_masks[:, None] * p_feats).reshape(3, c, -1), 0.01).reshape(h, w)
    want = np.where(q_mask >= 0.5, want, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[q_mask < 0.5] == 0) and np.all(got[q_mask >= 0.5] > 0)


def test_object_score_map_bbox_alignment_crops_resizes_and_pastes():
    """§4.8 align="bbox": partner box crops resized (bilinear, cv2.INTER_LINEAR sampling) to the query box,
    Gaussian on the crops, pasted into the query box; a shifted copy of the object scores as if aligned."""
    rng = np.random.default_rng(12)
    c, h, w = 3, 12, 12
    q_feats = rng.normal(size=(c, h, w)).astype(np.float32)
    q_mask = _soft_box(h, w, 2, 6, 3, 7)                     # binarised box rows 2-5, cols 3-6 (4 x 4)
    p_feats = rng.normal(size=(2, c, h, w)).astype(np.float32)
    p_masks = np.stack([_soft_box(h, w, 5, 9, 4, 10),         # 4 x 6 box: resized
                        _soft_box(h, w, 6, 10, 6, 8)])        # 4 x 2 box: resized
    got = amm.object_score_map(q_feats, q_mask, p_feats, p_masks, eps=0.01, align="bbox")
    crops = []
    for r, (y0, y1, x0, x1) in enumerate([(5, 9, 4, 10), (6, 10, 6, 8)]):
        crop = (p_masks[r] * p_feats[r])[:, y0:y1, x0:x1].transpose(1, 2, 0)
        crops.append(cv2.resize(np.ascontiguousarray(crop), (4, 4), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1))
    q_crop = (q_mask * q_feats)[:, 2:6, 3:7]
    want = np.zeros((h, w))
    want[2:6, 3:7] = _explicit_mahalanobis(q_crop.reshape(c, -1), np.stack(crops).reshape(2, c, -1),
                                           0.01).reshape(4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # the same object moved by (3, 4) in both partners: bbox == frame scores of the unmoved arrangement
    moved_feats = np.roll(p_feats, (3, 4), axis=(2, 3))
    partner_at_home = np.stack([q_mask, q_mask])
    moved_masks = np.roll(partner_at_home, (3, 4), axis=(1, 2))
    aligned = amm.object_score_map(q_feats, q_mask, p_feats, partner_at_home, align="frame")
    shifted = amm.object_score_map(q_feats, q_mask, moved_feats, moved_masks, align="bbox")
    np.testing.assert_allclose(shifted, aligned, rtol=1e-5)
    frame_on_shifted = amm.object_score_map(q_feats, q_mask, moved_feats, moved_masks, align="frame")
    assert not np.allclose(frame_on_shifted, aligned)
    assert np.all(amm.object_score_map(q_feats, np.zeros((h, w), np.float32), p_feats, p_masks, align="bbox") == 0)


