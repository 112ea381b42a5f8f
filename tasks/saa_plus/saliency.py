"""SAA+ visual saliency prompt (METHODS.md §2.4) and saliency rescoring (§2.5): pure numpy, no model, no I/O.

Features are C x h x w with unit C-vectors per location (see ``tasks.models.wrn50``); cosines are plain dot products.
Distances d = 0.5 * (1 - cos). Every pairwise computation runs in bounded chunks of matmuls.
"""
from __future__ import annotations

import cv2
import numpy as np

NEIGHBOURS = ("farthest", "nearest")
_BLOCK_ELEMS = 1 << 23  # entries of one distance/cosine block (32 MiB in float32)


def _flat(features: np.ndarray) -> np.ndarray:
    """C x h x w -> C x n (float32, or float64 if given float64)."""
    if features.ndim != 3:
        raise ValueError(f"expected C x h x w features, got shape {features.shape}")
    dtype = np.float64 if features.dtype == np.float64 else np.float32
    return np.ascontiguousarray(features.reshape(features.shape[0], -1), dtype=dtype)


def single_instance_saliency(features: np.ndarray, k: int = 400, neighbours: str = "farthest") -> np.ndarray:
    """features C x h x w -> h x w float32: per location, the mean of its k largest distances to the other locations
    ("farthest", the official code) or of its k smallest ("nearest", the paper's kNN). k is clipped to h*w - 1; the
    location itself is never counted (with k < h*w this equals the official sort over all locations, where the
    self-distance 0 never reaches the top k). A single location gives 0."""
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    f = _flat(features)
    n = f.shape[1]
    kk = min(int(k), n - 1)
    out = np.zeros(n, np.float32)
    if kk == 0:
        return out.reshape(features.shape[1:])
    rows = max(1, _BLOCK_ELEMS // n)
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        d = 0.5 * (1.0 - f[:, lo:hi].T @ f)  # (hi-lo) x n
        diag = (np.arange(hi - lo), np.arange(lo, hi))
        if neighbours == "farthest":
            d[diag] = -np.inf
            picked = np.partition(d, n - kk, axis=1)[:, n - kk:]
        else:
            d[diag] = np.inf
            picked = np.partition(d, kk - 1, axis=1)[:, :kk]
        out[lo:hi] = picked.mean(axis=1)
    return out.reshape(features.shape[1:])


def _max_cos_blocks(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fa C x na, fb C x nb -> (max cosine of each fa column over fb: na, of each fb column over fa: nb)."""
    row_max = np.full(fa.shape[1], -np.inf, fa.dtype)
    col_max = np.full(fb.shape[1], -np.inf, fb.dtype)
    col_step = max(1, min(fb.shape[1], _BLOCK_ELEMS // 1024))
    row_step = max(1, _BLOCK_ELEMS // col_step)
    for clo in range(0, fb.shape[1], col_step):
        cols = slice(clo, clo + col_step)
        for rlo in range(0, fa.shape[1], row_step):
            rows = slice(rlo, rlo + row_step)
            block = fa[:, rows].T @ fb[:, cols]
            np.maximum(row_max[rows], block.max(axis=1), out=row_max[rows])
            np.maximum(col_max[cols], block.max(axis=0), out=col_max[cols])
    return row_max, col_max


def multi_instance_saliency(features: np.ndarray, object_masks: np.ndarray) -> np.ndarray:
    """features C x h x w, object_masks M x h x w bool (at the feature grid) -> h x w float32.

    Object i scores each location p inside it 0.5 * (1 - max cos(f_p, f_q)) over the locations q of the OTHER objects'
    masks, and 0 outside its mask; the result is the pixel-wise max over objects. As in the official code, other
    objects' locations that also lie inside mask i count with cosine 0 (the code zeroes mask i's features first).
    Needs >= 2 non-empty masks (the official code crashes otherwise; :func:`saliency_map` falls back instead).

    Locations are grouped into cells of equal mask membership and each pair of cells is compared once, so two
    disjoint objects cost one n_1 x n_2 product, not two. Each cell's features are gathered once (extra memory at
    most the size of ``features``), the products run in blocks of ``_BLOCK_ELEMS`` entries."""
    f = _flat(features)
    n = f.shape[1]
    masks = np.asarray(object_masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != features.shape[1:]:
        raise ValueError(f"object_masks {masks.shape} do not match the feature grid {features.shape[1:]}")
    flat = masks.reshape(len(masks), n)
    if int(flat.any(axis=1).sum()) < 2:
        raise ValueError("multi-instance saliency needs at least 2 non-empty object masks")
    inside = np.flatnonzero(flat.any(axis=0))
    patterns, cell_of = np.unique(flat[:, inside].T, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    cells = [inside[cell_of == c] for c in range(len(patterns))]
    members = [set(np.flatnonzero(p).tolist()) for p in patterns]
    cell_feats = [np.take(f, idx, axis=1) for idx in cells]  # C x n_c each
    # best[c][i]: max cosine of cell c's locations (as part of object i) over the other objects' locations
    best = [{i: np.full(len(cells[c]), -np.inf, f.dtype) for i in members[c]} for c in range(len(cells))]
    for a in range(len(cells)):
        for b in range(a + 1, len(cells)):
            for_a = members[a] - members[b]  # objects of cell a that see cell b as "other"
            for_b = members[b] - members[a]
            row_max, col_max = _max_cos_blocks(cell_feats[a], cell_feats[b])
            for i in for_a:
                np.maximum(best[a][i], row_max, out=best[a][i])
            for i in for_b:
                np.maximum(best[b][i], col_max, out=best[b][i])
    # object i meets zeroed features if another object's mask overlaps it
    overlapped = {i for m in members if len(m) > 1 for i in m}
    out = np.full(n, -np.inf, np.float32)
    for i in range(len(flat)):
        obj_map = np.zeros(n, np.float32)
        for c in range(len(cells)):
            if i in members[c]:
                cos = np.maximum(best[c][i], 0.0) if i in overlapped else best[c][i]
                obj_map[cells[c]] = 0.5 * (1.0 - cos)
        np.maximum(out, obj_map, out=out)
    return out.reshape(features.shape[1:])


def saliency_mode(object_masks: np.ndarray | None, object_count: int) -> str:
    """"multi" when object_count > 1 and >= 2 masks are non-empty; "single-fallback" when object_count > 1 but fewer
    are; else "single". Call it on the masks already resized to the grid to pick the feature size before extracting."""
    if object_count <= 1:
        return "single"
    if object_masks is not None and len(object_masks) and int(np.asarray(object_masks).reshape(
            len(object_masks), -1).any(axis=1).sum()) >= 2:
        return "multi"
    return "single-fallback"


def saliency_fallbacks(object_masks: np.ndarray | None, object_count: int) -> list[str]:
    """Where the official code would crash in a multi-object category, given the masks at the grid (M x h x w):
    ``object_mask_empty_on_grid`` (a mask with no pixel on the grid: a ValueError there, left out here) and
    ``fewer_than_two_object_masks`` (< 2 non-empty: a RuntimeError or AttributeError there, single-instance here)."""
    if object_count <= 1:
        return []
    masks = np.zeros((0, 1, 1), bool) if object_masks is None else np.asarray(object_masks, bool)
    non_empty = masks.reshape(len(masks), int(np.prod(masks.shape[1:]))).any(axis=1)
    found = ["object_mask_empty_on_grid"] if not non_empty.all() else []
    return found + (["fewer_than_two_object_masks"] if int(non_empty.sum()) < 2 else [])


def saliency_map(features: np.ndarray, object_masks: np.ndarray | None, object_count: int, k: int = 400,
                 neighbours: str = "farthest") -> tuple[np.ndarray, str]:
    """features C x h x w, object_masks M x h x w bool at the grid (or None) -> (h x w float32 map, mode), mode from
    :func:`saliency_mode`. Multi-instance for "multi", single-instance (k, neighbours) otherwise. The official inputs
    are 1024 x 1024 (256 x 256 grid) for multi and 256 x 256 (64 x 64 grid) for single; on a fallback the caller
    should pass 64 x 64 features, since single-instance cost grows with (h*w)^2."""
    mode = saliency_mode(object_masks, object_count)
    if mode == "multi":
        return multi_instance_saliency(features, object_masks), mode
    return single_instance_saliency(features, k, neighbours), mode


def resize_masks_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """M x H x W bool -> M x size x size bool (cv2 INTER_NEAREST, as the official code)."""
    masks = np.asarray(masks)
    out = np.zeros((len(masks), size, size), bool)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return out


def upsample_saliency(sal: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """h x w -> H x W float32 (cv2 bilinear), hw = (H, W)."""
    h, w = int(hw[0]), int(hw[1])
    return cv2.resize(np.asarray(sal, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def rescore(scores: np.ndarray, masks: np.ndarray, saliency: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """scores N, masks N x H x W bool, saliency H x W -> N: s'_i = s_i * exp(scale * mean(saliency[mask_i])); an empty
    mask keeps its score (factor 1). float64 scores stay float64, anything else becomes float32."""
    scores = np.asarray(scores)
    masks = np.asarray(masks, bool)
    saliency = np.asarray(saliency, np.float64)
    if masks.shape[0] != scores.shape[0] or masks.shape[1:] != saliency.shape:
        raise ValueError(f"scores {scores.shape}, masks {masks.shape} and saliency {saliency.shape} do not fit")
    factor = np.ones(len(masks))
    for i, m in enumerate(masks):
        inside = saliency[m]
        if inside.size:
            factor[i] = np.exp(scale * inside.mean())
    dtype = np.result_type(scores.dtype, np.float32)
    return (scores.astype(np.float64) * factor).astype(dtype)
