"""SAM-LAD template bank and reference search (METHODS.md §4.2, Eq. 2): pure numpy (+ faiss when installed).

Bank entries and queries are flattened feature maps (D = 384 x 16 x 16 = 98,304 for DINOv2-S at 224). Distances
are plain L2 (not squared). Every ordering is deterministic: ascending distance, ties broken by the lower bank index.
"""
from __future__ import annotations

import numpy as np

BACKENDS = ("auto", "faiss", "numpy")
_BLOCK_ELEMS = 1 << 22  # entries of one float64 working block (32 MiB)


def _require_matrix(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"sam_lad.bank: {name} must be a 2-D (rows, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"sam_lad.bank: {name} holds NaN or infinite values")
    return array


def kcenter_greedy(features: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Greedy k-center coreset (PatchCore's rule, exact L2, no random projection).

    features: (Z, D) float32. Starts from one point drawn with ``numpy.random.default_rng(seed)``, then repeatedly
    adds the point farthest (L2) from the chosen set; ties go to the lower index. Points already chosen are never
    chosen again, so duplicates of chosen points are picked (at distance 0) only once everything else is covered.
    Returns (count,) int64 indices in the order chosen. count must be in [0, Z].
    """
    features = _require_matrix("features", features)
    total = features.shape[0]
    if not 0 <= count <= total:
        raise ValueError(f"sam_lad.bank.kcenter_greedy: count must be in [0, {total}] (the number of features), "
                         f"got {count}")
    chosen = np.empty(count, np.int64)
    if count == 0:
        return chosen
    chosen[0] = np.random.default_rng(seed).integers(total)
    # squared distances (same order as L2), accumulated in float64 block by block
    min_dist = _exact_squared(features, features[chosen[0]])
    min_dist[chosen[0]] = -np.inf
    for step in range(1, count):
        pick = int(np.argmax(min_dist))  # first maximum = lower index on ties
        chosen[step] = pick
        np.minimum(min_dist, _exact_squared(features, features[pick]), out=min_dist)
        min_dist[pick] = -np.inf   # chosen points stay at -inf through np.minimum
    return chosen


def _exact_squared(bank: np.ndarray, query: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 from one query (D,) to bank rows (all, or the given indices), as sums of squared float64
    differences (no norm expansion, so exact ties stay exact ties). Returns (Z,) or (len(rows),) float64."""
    q = query.astype(np.float64)
    picked = bank if rows is None else bank[rows]
    out = np.empty(picked.shape[0], np.float64)
    step = max(1, _BLOCK_ELEMS // max(1, bank.shape[1]))
    for lo in range(0, picked.shape[0], step):
        diff = picked[lo:lo + step].astype(np.float64) - q
        out[lo:lo + step] = np.einsum("rd,rd->r", diff, diff)
    return out


def _row_squared_norms(rows: np.ndarray) -> np.ndarray:
    """(R, D) -> (R,) float64 squared norms, converted to float64 block by block."""
    out = np.empty(rows.shape[0], np.float64)
    step = max(1, _BLOCK_ELEMS // max(1, rows.shape[1]))
    for lo in range(0, rows.shape[0], step):
        block = rows[lo:lo + step].astype(np.float64)
        out[lo:lo + step] = np.einsum("rd,rd->r", block, block)
    return out


def _gemm_candidates(bank: np.ndarray, queries: np.ndarray, count: int) -> np.ndarray:
    """(Q, count) int64 bank indices of smallest |b|^2 - 2 q.b (|q|^2 is constant per query), unordered; float64
    matmuls over blocks of queries x bank rows, so no whole float64 copy of either is made."""
    step = max(1, _BLOCK_ELEMS // max(1, bank.shape[1]))
    approx = np.empty((queries.shape[0], bank.shape[0]), np.float64)
    for q_lo in range(0, queries.shape[0], step):
        q = queries[q_lo:q_lo + step].astype(np.float64)
        for b_lo in range(0, bank.shape[0], step):
            block = bank[b_lo:b_lo + step].astype(np.float64)
            cross = (block @ q.T).T     # this operand order is many times faster in OpenBLAS for long rows
            approx[q_lo:q_lo + step, b_lo:b_lo + step] = np.einsum("rd,rd->r", block, block)[None, :] - 2.0 * cross
    return np.argpartition(approx, count - 1, axis=1)[:, :count].astype(np.int64)


def _faiss_candidates(bank: np.ndarray, queries: np.ndarray, count: int) -> np.ndarray:
    import faiss  # optional dependency: only the "faiss" backend needs it

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), count)
    return found.astype(np.int64)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _k_smallest(indices: np.ndarray, sq_dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k entries of smallest distance, ties by lower index: (k,) int64, (k,) float64."""
    order = np.lexsort((indices, sq_dist))[:k]
    return indices[order].astype(np.int64), sq_dist[order]


def nearest_references(bank: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
                       backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest bank entries per query (METHODS.md §4.2).

    bank: (Z, D) float32; queries: (Q, D) float32; exclude: (Q,) int64 bank index to skip per query (-1 = none),
    for a query whose own image is in the bank (the caller matches content hashes). A query equal to a bank entry
    is NOT skipped otherwise. Returns (indices (Q, k) int64, distances (Q, k) float32 L2, not squared), ascending,
    ties broken by the lower bank index.

    A fast search proposes k + 9 candidates per query: backend "faiss" = ``faiss.IndexFlatL2`` (float32), "numpy"
    = a float64 matmul with the norm expansion, "auto" = faiss if importable, else numpy. The candidates' distances
    are then recomputed exactly (float64 sums of squared differences) and sorted by (distance, index). A query
    whose k-th distance comes within the search's rounding error of its last candidate's (a tie group the fast
    search may have cut) is redone by exact brute force, so every backend returns the same answer.
    """
    bank = _require_matrix("bank", bank)
    queries = _require_matrix("queries", queries)
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"sam_lad.bank.nearest_references: bank rows have {bank.shape[1]} values but queries "
                         f"have {queries.shape[1]}")
    if backend not in BACKENDS:
        raise ValueError(f"sam_lad.bank.nearest_references: backend must be one of {BACKENDS}, got {backend!r}")
    total, n_queries = bank.shape[0], queries.shape[0]
    skip = np.full(n_queries, -1, np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    if skip.shape != (n_queries,):
        raise ValueError(f"sam_lad.bank.nearest_references: exclude must have shape ({n_queries},), got {skip.shape}")
    if np.any((skip < -1) | (skip >= total)):
        raise ValueError(f"sam_lad.bank.nearest_references: exclude values must be -1 or a bank index < {total}")
    available = total - int(np.any(skip >= 0))
    if k < 1 or k > available:
        raise ValueError(f"sam_lad.bank.nearest_references: k must be in [1, {available}] (bank of {total}"
                         f"{', one excluded per query' if available < total else ''}), got {k}")
    indices = np.empty((n_queries, k), np.int64)
    best = np.empty((n_queries, k), np.float64)
    if n_queries == 0:
        return indices, best.astype(np.float32)

    use_faiss = backend == "faiss" or (backend == "auto" and _faiss_available())
    count = k + 1 + 8
    every = np.arange(total, dtype=np.int64)
    if count < total:
        candidates = (_faiss_candidates if use_faiss else _gemm_candidates)(bank, queries, count)
        # bound on the fast search's rounding, relative to |q|^2 + |b|^2 (float32 / float64 accumulation over D)
        relative_error = 1e-4 if use_faiss else 1e-10
        bank_sq_max = float(np.max(_row_squared_norms(bank)))
    for row in range(n_queries):
        if count < total:
            cand = candidates[row][candidates[row] >= 0]
            sq = _exact_squared(bank, queries[row], cand)
            sq[cand == skip[row]] = np.inf
            idx, dist = _k_smallest(cand, sq, k)
            q_sq = float(_row_squared_norms(queries[row:row + 1])[0])
            margin = 2.0 * relative_error * (q_sq + bank_sq_max)   # one error on each side of the comparison
            if cand.size == count and dist[-1] + margin < np.max(sq[np.isfinite(sq)]):
                indices[row], best[row] = idx, dist
                continue
        sq = _exact_squared(bank, queries[row])
        if skip[row] >= 0:
            sq[skip[row]] = np.inf
        indices[row], best[row] = _k_smallest(every, sq, k)
    return indices, np.sqrt(best).astype(np.float32)


def random_single_reference(indices: np.ndarray, seed: int) -> np.ndarray:
    """Eq. 2 read literally: one reference drawn uniformly among each query's k nearest.

    indices: (Q, k) int64 from ``nearest_references``. Column picks come from ``numpy.random.default_rng(seed)``
    (one draw per query, in query order), so the same seed gives the same picks. Returns (Q, 1) int64.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] < 1:
        raise ValueError(f"sam_lad.bank.random_single_reference: indices must be (Q, k) with k >= 1, "
                         f"got shape {indices.shape}")
    columns = np.random.default_rng(seed).integers(0, indices.shape[1], size=indices.shape[0])
    return indices[np.arange(indices.shape[0]), columns][:, None].astype(np.int64)
