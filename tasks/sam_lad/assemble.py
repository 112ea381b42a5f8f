"""SAM-LAD map assembly (METHODS.md §4.8-4.9, Eq. 13-16), anomflow's missing-object term, and the upsampling to
the image size. Pure numpy (+ one torch resize and scipy's Gaussian filter)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

VARIANTS = ("full", "unmatched_only")


def assemble_map(object_maps: np.ndarray, unmatched: np.ndarray, variant: str = "full") -> np.ndarray:
    """Final map from the M query objects' maps. object_maps: (M, h, w) float32; unmatched: (M,) bool.

    full (Eq. 13-15): M_matching (sum over matched objects) + M_non-matching (sum over unmatched objects), i.e. the
    sum of all object maps. unmatched_only (Eq. 16, DigitAnatomy): M_non-matching alone. Returns (h, w) float32
    (zeros when no object contributes).
    """
    object_maps, unmatched = np.asarray(object_maps), np.asarray(unmatched)
    if variant not in VARIANTS:
        raise ValueError(f"sam_lad.assemble.assemble_map: variant must be one of {VARIANTS}, got {variant!r}")
    if object_maps.ndim != 3 or unmatched.shape != (object_maps.shape[0],) or unmatched.dtype != bool:
        raise ValueError(f"sam_lad.assemble.assemble_map: need object_maps (M, h, w) and unmatched (M,) bool; got "
                         f"{object_maps.shape} and {unmatched.shape} {unmatched.dtype}")
    maps = object_maps.astype(np.float64)
    non_matching = maps[unmatched].sum(axis=0)                                  # Eq. 14
    if variant == "unmatched_only":
        return non_matching.astype(np.float32)                                  # Eq. 16
    matching = maps[~unmatched].sum(axis=0)                                     # Eq. 13
    return (matching + non_matching).astype(np.float32)                         # Eq. 15


def missing_object_maps(reference_dustbin: np.ndarray, matched_r: np.ndarray, score_maps: np.ndarray) -> np.ndarray:
    """anomflow's missing-object term for one reference (METHODS.md §4.8 last point; not in the paper).

    reference_dustbin: (N,) float, P_M+1,j from ``omm.mutual_matches``; matched_r: (N,) bool; score_maps:
    (N, h, w) float32, for each reference object the Gaussian score of the query's features under that object's
    mask against the k references' features there (computed by the caller, same scale as the object maps). A
    reference object with no query partner contributes score_map_j x its dustbin mass, where it lies. Returns
    (h, w) float32.
    """
    dustbin, matched = np.asarray(reference_dustbin, np.float64), np.asarray(matched_r)
    score_maps = np.asarray(score_maps)
    if score_maps.ndim != 3 or dustbin.shape != (score_maps.shape[0],) or matched.shape != dustbin.shape \
            or matched.dtype != bool:
        raise ValueError(f"sam_lad.assemble.missing_object_maps: need reference_dustbin (N,), matched_r (N,) bool "
                         f"and score_maps (N, h, w); got {dustbin.shape}, {matched.shape} {matched.dtype} and "
                         f"{score_maps.shape}")
    weights = np.where(matched, 0.0, dustbin)
    return np.einsum("n,nhw->hw", weights, score_maps.astype(np.float64)).astype(np.float32)


def combine_missing_over_references(per_reference: list[np.ndarray]) -> np.ndarray:
    """The k references' missing-object maps (each (h, w), from ``missing_object_maps``) -> their mean (h, w)
    float32: every reference's unmatched objects contribute, summed over references and divided by k, so the term
    does not grow with k."""
    if not per_reference:
        raise ValueError("sam_lad.assemble.combine_missing_over_references: no reference maps given (k must be >= 1)")
    shapes = {np.shape(m) for m in per_reference}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"sam_lad.assemble.combine_missing_over_references: maps must all be (h, w) of one size, "
                         f"got {sorted(shapes)}")
    return (np.sum([np.asarray(m, np.float64) for m in per_reference], axis=0) / len(per_reference)).astype(np.float32)


def upsample_map(score_map: np.ndarray, out_hw: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """(h, w) map -> (H, W) float32: bilinear resize (``torch.nn.functional.interpolate``, align_corners=False,
    no antialias; the same sampling as cv2.INTER_LINEAR) to the image size, then, if sigma > 0, a Gaussian blur
    (``scipy.ndimage.gaussian_filter``, mode "reflect", truncate 4.0) of sigma pixels. sigma 0 = no blur."""
    score_map = np.asarray(score_map, np.float32)
    if score_map.ndim != 2:
        raise ValueError(f"sam_lad.assemble.upsample_map: map must be (h, w), got shape {score_map.shape}")
    height, width = int(out_hw[0]), int(out_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"sam_lad.assemble.upsample_map: output size must be positive, got {out_hw}")
    if sigma < 0:
        raise ValueError(f"sam_lad.assemble.upsample_map: sigma must be >= 0, got {sigma}")
    tensor = torch.from_numpy(np.ascontiguousarray(score_map))[None, None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                            antialias=False)[0, 0].numpy()
    if sigma > 0:
        resized = gaussian_filter(resized, sigma=sigma, mode="reflect", truncate=4.0)
    return resized.astype(np.float32)


def image_score(score_map: np.ndarray) -> float:
    """Image-level score: the maximum of the (upsampled) map; 0.0 for an empty map."""
    score_map = np.asarray(score_map)
    return float(score_map.max()) if score_map.size else 0.0
