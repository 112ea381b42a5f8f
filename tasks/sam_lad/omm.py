"""SAM-LAD object matching (OMM, METHODS.md §4.7): SuperGlue's optimal transport with a dustbin, pure numpy.

M query objects, N reference objects. Scores are inner products of unit descriptors (Eq. 10); the transport runs
at temperature 1 on them (SuperGlue's log-domain Sinkhorn), so the dustbin score z is on the cosine scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

MATCH_RULES = ("any", "all", "majority")


def score_matrix(desc_q: np.ndarray, desc_r: np.ndarray) -> np.ndarray:
    """Eq. 10: S_ij = <d_i, d_j>. desc_q (M, C), desc_r (N, C) float32 unit rows -> (M, N) float64."""
    desc_q, desc_r = np.asarray(desc_q, dtype=np.float64), np.asarray(desc_r, dtype=np.float64)
    if desc_q.ndim != 2 or desc_r.ndim != 2 or desc_q.shape[1] != desc_r.shape[1]:
        raise ValueError(f"sam_lad.omm.score_matrix: descriptors must be (M, C) and (N, C) with the same C, got "
                         f"{desc_q.shape} and {desc_r.shape}")
    return desc_q @ desc_r.T


def log_sinkhorn_with_dustbin(scores: np.ndarray, z: float, iterations: int = 100) -> np.ndarray:
    """SuperGlue's log-domain optimal transport with one dustbin row and column.

    scores: (M, N). The coupling matrix is scores bordered by z (dustbin column, dustbin row and their corner).
    Marginals (log): mu = [0 x M, log N] - log(M+N) over rows, nu = [0 x N, log M] - log(M+N) over columns.
    Starting from u = v = 0, each iteration sets u = log mu - LSE_j(Z_ij + v_j), then v = log nu - LSE_i(Z_ij +
    u_i). Returns (M+1, N+1) float64 log-assignment Z + u + v + log(M+N), so that exp() has rows summing to 1 for
    real objects and N for the dustbin row (columns: 1 and M). M = 0 or N = 0: every object goes to the dustbin
    (log 0 = -inf on the empty side's dustbin entry); M = N = 0: [[-inf]].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"sam_lad.omm.log_sinkhorn_with_dustbin: scores must be (M, N), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)) or not np.isfinite(z):
        raise ValueError("sam_lad.omm.log_sinkhorn_with_dustbin: scores and z must be finite")
    if iterations < 0:
        raise ValueError(f"sam_lad.omm.log_sinkhorn_with_dustbin: iterations must be >= 0, got {iterations}")
    m, n = scores.shape
    if m + n == 0:
        return np.full((1, 1), -np.inf)
    couplings = np.full((m + 1, n + 1), float(z))
    couplings[:m, :n] = scores
    norm = -np.log(m + n)
    with np.errstate(divide="ignore"):   # log 0 for an empty side's dustbin: -inf, no mass
        log_mu = np.concatenate([np.full(m, norm), [np.log(n) + norm]])
        log_nu = np.concatenate([np.full(n, norm), [np.log(m) + norm]])
    u, v = np.zeros(m + 1), np.zeros(n + 1)
    for _ in range(iterations):
        u = log_mu - logsumexp(couplings + v[None, :], axis=1)
        v = log_nu - logsumexp(couplings + u[:, None], axis=0)
    return couplings + u[:, None] + v[None, :] - norm


@dataclass(frozen=True)
class Matching:
    """One query-reference matching. M query objects, N reference objects.

    match_q (M,) int64: matched reference index, -1 = unmatched. match_r (N,) int64: matched query index or -1.
    nearest_r (M,) int64: argmax_j P_ij over real references (the partner of an unmatched object), -1 if N = 0.
    query_dustbin (M,) float64: P_i,N+1. reference_dustbin (N,) float64: P_M+1,j. assignment (M, N) float64: P.
    """

    match_q: np.ndarray
    match_r: np.ndarray
    nearest_r: np.ndarray
    query_dustbin: np.ndarray
    reference_dustbin: np.ndarray
    assignment: np.ndarray

    @property
    def unmatched_q(self) -> np.ndarray:
        """(M,) bool: query objects with no mutual match."""
        return self.match_q < 0

    @property
    def matched_r(self) -> np.ndarray:
        """(N,) bool: reference objects matched by a query object."""
        return self.match_r >= 0


def mutual_matches(probabilities: np.ndarray, threshold: float = 0.2) -> Matching:
    """SuperGlue's matching rule on exp(log_sinkhorn_with_dustbin(...)): (M+1, N+1) probabilities.

    i <-> j iff j = argmax_j P_ij and i = argmax_i P_ij over the real block (mutual; ties go to the lower index)
    and P_ij > threshold. Returns a ``Matching``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or min(p.shape) < 1:
        raise ValueError(f"sam_lad.omm.mutual_matches: probabilities must be (M+1, N+1), got shape {p.shape}")
    m, n = p.shape[0] - 1, p.shape[1] - 1
    real = p[:m, :n]
    match_q = np.full(m, -1, np.int64)
    match_r = np.full(n, -1, np.int64)
    nearest_r = np.full(m, -1, np.int64)
    if m and n:
        nearest_r = real.argmax(axis=1).astype(np.int64)
        nearest_q = real.argmax(axis=0)
        rows = np.arange(m)
        valid = (nearest_q[nearest_r] == rows) & (real[rows, nearest_r] > threshold)
        match_q[valid] = nearest_r[valid]
        match_r[nearest_r[valid]] = rows[valid]
    return Matching(match_q=match_q, match_r=match_r, nearest_r=nearest_r, query_dustbin=p[:m, n].copy(),
                    reference_dustbin=p[m, :n].copy(), assignment=real.copy())


def unmatched_across_references(matches: list[Matching], rule: str = "any") -> np.ndarray:
    """Query objects labelled unmatched over the k references (METHODS.md §4.7 last point). Returns (M,) bool.

    any: unmatched w.r.t. at least one reference. all: w.r.t. every reference. majority: w.r.t. strictly more
    than half of them (a tie at even k, e.g. 1 of 2, counts as matched; at k = 2 majority equals all).
    """
    if rule not in MATCH_RULES:
        raise ValueError(f"sam_lad.omm.unmatched_across_references: rule must be one of {MATCH_RULES}, got {rule!r}")
    if not matches:
        raise ValueError("sam_lad.omm.unmatched_across_references: no matchings given (k must be >= 1)")
    sizes = {match.match_q.shape[0] for match in matches}
    if len(sizes) != 1:
        raise ValueError(f"sam_lad.omm.unmatched_across_references: matchings disagree on the number of query "
                         f"objects: {sorted(sizes)}")
    unmatched = np.stack([match.unmatched_q for match in matches])   # (k, M)
    if rule == "any":
        return unmatched.any(axis=0)
    if rule == "all":
        return unmatched.all(axis=0)
    return 2 * unmatched.sum(axis=0) > len(matches)
