"""SAM-LAD object feature maps (METHODS.md §4.5) and Dynamic Channel Graph Attention descriptors (§4.6).

Pure numpy plus one torch call (the mask resize). Shapes: M objects, C channels, H x W image masks, h x w feature
grid. The mask resize is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
antialias=False)`` on the 0/1 mask as float32: half-pixel centres, the same sampling as ``cv2.INTER_LINEAR`` on
float input, and no low-pass filter when shrinking (a mask thinner than the shrink factor can vanish).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

POOLS = ("max", "mean")
DCGA_MODES = ("residual", "literal", "gmp", "gap")
_NORM_FLOOR = 1e-12   # vectors shorter than this count as zero (normalised to zero, cosine 0)


def _check_masks_features(masks: np.ndarray, features: np.ndarray) -> None:
    if masks.ndim != 3:
        raise ValueError(f"sam_lad.dcga: masks must be (M, H, W), got shape {masks.shape}")
    if features.ndim != 3:
        raise ValueError(f"sam_lad.dcga: features must be (C, h, w), got shape {features.shape}")


def resize_masks(masks: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Binary masks (M, H, W) bool -> soft weights (M, h, w) float32 in [0, 1], bilinear (see module docstring)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"sam_lad.dcga.resize_masks: masks must be (M, H, W), got shape {masks.shape}")
    h, w = int(size_hw[0]), int(size_hw[1])
    if masks.shape[0] == 0:
        return np.zeros((0, h, w), np.float32)
    if masks.shape[1:] == (h, w):
        return masks.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    resized = F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return resized[:, 0].numpy().clip(0.0, 1.0)


def object_feature_maps(masks: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Per-object feature maps: soft mask (resized to h x w) times the features, channel-wise.

    masks: (M, H, W) bool; features: (C, h, w) float32. Returns (M, C, h, w) float32 (zeros outside each mask).
    Memory is M x C x h x w x 4 bytes (25 MB per object at 384 x 128 x 128): use ``pooled_object_features`` when
    only the pooled vectors are needed.
    """
    masks, features = np.asarray(masks), np.asarray(features, dtype=np.float32)
    _check_masks_features(masks, features)
    weights = resize_masks(masks, features.shape[1:])
    return weights[:, None] * features[None]


def pooled_object_features(masks: np.ndarray, features: np.ndarray, pool: str = "max",
                           inside_mask: bool = True) -> np.ndarray:
    """Global pooling of each object feature map, one object at a time (never the whole (M, C, h, w) array).

    masks: (M, H, W) bool; features: (C, h, w) float32. Returns (M, C) float32.
    inside_mask=False: max / mean over all h x w positions of weight x feature (the paper's GMP: the zeros outside
    the mask take part). inside_mask=True: max / mean over the positions whose soft weight is > 0 only (still of
    weight x feature; the mean divides by the number of such positions). An object with no such position (its
    mask vanished in the resize) pools to zeros.
    """
    masks, features = np.asarray(masks), np.asarray(features, dtype=np.float32)
    _check_masks_features(masks, features)
    if pool not in POOLS:
        raise ValueError(f"sam_lad.dcga.pooled_object_features: pool must be one of {POOLS}, got {pool!r}")
    channels = features.shape[0]
    flat = features.reshape(channels, -1)
    out = np.zeros((masks.shape[0], channels), np.float32)
    for obj in range(masks.shape[0]):
        weight = resize_masks(masks[obj:obj + 1], features.shape[1:])[0].reshape(-1)
        if inside_mask:
            support = np.flatnonzero(weight > 0)
            if support.size == 0:
                continue
            values = flat[:, support] * weight[support]
        else:
            values = flat * weight
        out[obj] = values.max(axis=1) if pool == "max" else values.mean(axis=1, dtype=np.float64)
    return out


def l2_normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """(M, C) -> (M, C) float64 unit rows; a row shorter than 1e-12 becomes all zeros."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > _NORM_FLOOR, vectors / np.maximum(norms, _NORM_FLOOR), 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp_x = np.exp(x[~positive])
    out[~positive] = exp_x / (1.0 + exp_x)
    return out


@dataclass(frozen=True)
class DCGAParts:
    """Every intermediate of DCGA (§4.6), float64. M objects, C channels.

    channel_weights (M, C): softmax_c(w f_in), the diagonal of A = A0 A1 per object (A0 = I_C).
    attended (M, C): G = f_in A (row-wise), i.e. f_in ⊙ channel_weights.
    gate (M, C): sigmoid(f_in ⊙ G).
    object_graph (M, M): A2, cosines of f_in rows clamped at >= 0, zero diagonal, rows divided by their sums;
    a row whose sum is 0 (M = 1, or no positive cosine to any other object) stays all zeros: no messages.
    """

    channel_weights: np.ndarray
    attended: np.ndarray
    gate: np.ndarray
    object_graph: np.ndarray


def dcga_parts(f_in: np.ndarray, w: float = 1.0) -> DCGAParts:
    """DCGA's intermediates for pooled object vectors f_in (M, C) float32 and AGCA's scalar weight w."""
    f = np.asarray(f_in, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"sam_lad.dcga: f_in must be (M, C) with C >= 1, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("sam_lad.dcga: f_in holds NaN or infinite values")
    logits = w * f
    channel_weights = np.exp(logits - logits.max(axis=1, keepdims=True))   # stable softmax over channels
    channel_weights /= channel_weights.sum(axis=1, keepdims=True)
    attended = f * channel_weights
    gate = _sigmoid(f * attended)
    unit = l2_normalise_rows(f)
    similarity = np.clip(unit @ unit.T, 0.0, None)
    np.fill_diagonal(similarity, 0.0)
    row_sums = similarity.sum(axis=1, keepdims=True)
    object_graph = np.where(row_sums > 0, similarity / np.where(row_sums > 0, row_sums, 1.0), 0.0)
    return DCGAParts(channel_weights, attended, gate, object_graph)


def dcga(f_in: np.ndarray, w: float = 1.0, mode: str = "residual") -> np.ndarray:
    """DCGA descriptors (METHODS.md §4.6 "Reference implementation"), one image's object set at a time.

    f_in: (M, C) float32 pooled object vectors (max-pooled for "gmp"/"residual"/"literal", mean-pooled by the
    caller for "gap"). Returns (M, C) float32 L2-normalised rows (an all-zero row stays zero).
    literal: Y = A2 gate. residual (default): Y = f_in ⊙ gate + A2 (f_in ⊙ gate), keeping each object's own
    evidence that A2's zero diagonal drops. gmp / gap: Y = f_in (the pooled vector itself).
    """
    if mode not in DCGA_MODES:
        raise ValueError(f"sam_lad.dcga.dcga: mode must be one of {DCGA_MODES}, got {mode!r}")
    f = np.asarray(f_in, dtype=np.float64)
    if mode in ("gmp", "gap"):
        if f.ndim != 2:
            raise ValueError(f"sam_lad.dcga: f_in must be (M, C), got shape {f.shape}")
        return l2_normalise_rows(f).astype(np.float32)
    parts = dcga_parts(f, w)
    if mode == "literal":
        y = parts.object_graph @ parts.gate
    else:
        gated = f * parts.gate
        y = gated + parts.object_graph @ gated
    return l2_normalise_rows(y).astype(np.float32)
