"""SAM-LAD anomaly measurement (AMM, METHODS.md §4.8, Eq. 11-12): per-position Gaussian over k partner objects.

Sigma = (1/(k-1)) sum_r (F^r - mu)(F^r - mu)^T + eps I has rank <= k-1 plus eps I, so its inverse comes from the
Woodbury identity with a k x k solve per position; no C x C matrix is ever built. Accumulation is float64.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ALIGNS = ("frame", "bbox")
_BLOCK_ELEMS = 1 << 22   # float64 entries of one (k, C, positions) working block (32 MiB)


def _pair_squared(x: np.ndarray, half_diff: np.ndarray, eps: float) -> np.ndarray:
    """k = 2 closed form: Sigma = eps I + 2 d d^T, D^2 = (|x|^2 - 2 (d.x)^2 / (eps + 2|d|^2)) / eps. (C, b) -> (b,)."""
    dx = np.einsum("cp,cp->p", half_diff, x)
    dd = np.einsum("cp,cp->p", half_diff, half_diff)
    return (np.einsum("cp,cp->p", x, x) - 2.0 * dx * dx / (eps + 2.0 * dd)) / eps


def _woodbury_squared(x: np.ndarray, spread: np.ndarray, eps: float) -> np.ndarray:
    """General k: U = spread (k, C, b) = (F^r - mu)/sqrt(k-1); Sigma^-1 = (I - U (eps I_k + U^T U)^-1 U^T) / eps.
    D^2 = (|x|^2 - b^T (eps I_k + U^T U)^-1 b) / eps with b = U^T x. Returns (b,)."""
    k = spread.shape[0]
    gram = np.einsum("icp,jcp->pij", spread, spread) + eps * np.eye(k)   # (b, k, k)
    proj = np.einsum("icp,cp->pi", spread, x)                             # (b, k)
    solved = np.linalg.solve(gram, proj[..., None])[..., 0]
    return (np.einsum("cp,cp->p", x, x) - np.einsum("pi,pi->p", proj, solved)) / eps


def mahalanobis_map(query: np.ndarray, partners: np.ndarray, eps: float = 0.01, fast_pair: bool = True) -> np.ndarray:
    """Eq. 11-12 per position: sqrt((f - mu)^T Sigma^-1 (f - mu)) with mu, Sigma from the k partners.

    query: (C, P) float32; partners: (k, C, P) float32. Returns (P,) float32.
    k >= 2: Sigma = (1/(k-1)) sum_r (F^r - mu)(F^r - mu)^T + eps I, inverted by Woodbury (fast_pair: the k = 2
    closed form instead). k = 1: the covariance term is undefined (1/(k-1)) and dropped, Sigma = eps I, so the
    score is |f - F^1| / sqrt(eps). Tiny negative D^2 from rounding are clamped to 0.
    """
    query, partners = np.asarray(query), np.asarray(partners)
    if query.ndim != 2 or partners.ndim != 3 or partners.shape[1:] != query.shape:
        raise ValueError(f"sam_lad.amm.mahalanobis_map: need query (C, P) and partners (k, C, P) with the same C, P; "
                         f"got {query.shape} and {partners.shape}")
    k, channels, positions = partners.shape
    if k < 1:
        raise ValueError("sam_lad.amm.mahalanobis_map: at least one partner is needed (k = 0)")
    if not eps > 0:
        raise ValueError(f"sam_lad.amm.mahalanobis_map: eps must be > 0, got {eps}")
    out = np.empty(positions, np.float32)
    step = max(1, _BLOCK_ELEMS // max(1, (k + 1) * channels))
    for lo in range(0, positions, step):
        block = slice(lo, lo + step)
        f = query[:, block].astype(np.float64)
        group = partners[:, :, block].astype(np.float64)
        mu = group.mean(axis=0)
        x = f - mu
        if k == 1:
            squared = np.einsum("cp,cp->p", x, x) / eps
        elif k == 2 and fast_pair:
            squared = _pair_squared(x, 0.5 * (group[0] - group[1]), eps)
        else:
            squared = _woodbury_squared(x, (group - mu) / np.sqrt(k - 1), eps)
        out[block] = np.sqrt(np.maximum(squared, 0.0))
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, y1, x0, x1), end-exclusive, of a (h, w) bool mask; None if the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize_maps(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(n, C, a, b) float32 -> (n, C, h, w): bilinear, align_corners=False (the masks' resize in ``dcga``)."""
    if maps.shape[2:] == tuple(size_hw):
        return maps
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    return F.interpolate(tensor, size=size_hw, mode="bilinear", align_corners=False, antialias=False).numpy()


def object_score_map(query_feats: np.ndarray, query_mask_soft: np.ndarray, partner_feats: np.ndarray,
                     partner_masks: np.ndarray, eps: float = 0.01, align: str = "frame",
                     mask_threshold: float = 0.5, fast_pair: bool = True) -> np.ndarray:
    """One query object's anomaly map M_i (METHODS.md §4.8).

    query_feats: (C, h, w) float32; query_mask_soft: (h, w) float32 soft mask (``dcga.resize_masks``);
    partner_feats: (k, C, h, w) float32, the partners' images' features; partner_masks: (k, h, w) float32 soft
    masks of the k partner objects. Object maps are soft mask x features. The binarised masks are soft >=
    mask_threshold. Returns (h, w) float32, zero outside the binarised query mask.

    frame: Gaussian per position over the whole frame (positions compared as they lie), times the binarised query
    mask. bbox: each object's bounding box (of its binarised mask) is cropped from its object map, the partner
    crops are resized bilinearly to the query crop's size, the Gaussian runs on the crops, and the result times
    the binarised query mask is pasted back into the query's box. A partner whose binarised mask is empty is
    cropped at the query's box instead. An empty binarised query mask gives an all-zero map.
    """
    query_feats, query_mask_soft = np.asarray(query_feats, np.float32), np.asarray(query_mask_soft, np.float32)
    partner_feats, partner_masks = np.asarray(partner_feats, np.float32), np.asarray(partner_masks, np.float32)
    if align not in ALIGNS:
        raise ValueError(f"sam_lad.amm.object_score_map: align must be one of {ALIGNS}, got {align!r}")
    if query_feats.ndim != 3 or query_mask_soft.shape != query_feats.shape[1:]:
        raise ValueError(f"sam_lad.amm.object_score_map: need query_feats (C, h, w) and query_mask_soft (h, w); got "
                         f"{query_feats.shape} and {query_mask_soft.shape}")
    if partner_feats.ndim != 4 or partner_feats.shape[1:] != query_feats.shape or \
            partner_masks.shape != (partner_feats.shape[0],) + query_feats.shape[1:]:
        raise ValueError(f"sam_lad.amm.object_score_map: need partner_feats (k, C, h, w) and partner_masks (k, h, w) "
                         f"matching the query's {query_feats.shape}; got {partner_feats.shape} and "
                         f"{partner_masks.shape}")
    channels, h, w = query_feats.shape
    query_bin = query_mask_soft >= mask_threshold
    out = np.zeros((h, w), np.float32)
    query_box = mask_box(query_bin)
    if query_box is None:
        return out
    if align == "frame":
        query_map = (query_mask_soft * query_feats).reshape(channels, -1)
        partner_maps = (partner_masks[:, None] * partner_feats).reshape(partner_feats.shape[0], channels, -1)
        scores = mahalanobis_map(query_map, partner_maps, eps, fast_pair).reshape(h, w)
        return np.where(query_bin, scores, 0.0).astype(np.float32)
    y0, y1, x0, x1 = query_box
    query_crop = query_mask_soft[y0:y1, x0:x1] * query_feats[:, y0:y1, x0:x1]
    crops = []
    for feats, mask in zip(partner_feats, partner_masks):
        py0, py1, px0, px1 = mask_box(mask >= mask_threshold) or query_box
        crop = mask[py0:py1, px0:px1] * feats[:, py0:py1, px0:px1]
        crops.append(_resize_maps(crop[None], (y1 - y0, x1 - x0))[0])
    partner_crops = np.stack(crops).reshape(len(crops), channels, -1)
    scores = mahalanobis_map(query_crop.reshape(channels, -1), partner_crops, eps, fast_pair).reshape(y1 - y0, x1 - x0)
    out[y0:y1, x0:x1] = np.where(query_bin[y0:y1, x0:x1], scores, 0.0)
    return out
