"""Non-learned feature upsamplers: the substitutes used when FeatUp's JBU weights are absent (METHODS.md §4.4,
§4.10), and the local-window arithmetic FeatUp's learned stack (:mod:`tasks.models.featup`) shares with them.

* :func:`bilinear_upsample`: one bilinear resize by ``factor`` (METHODS' "JBU missing -> bilinear x8").
* :func:`joint_bilateral_upsample`: a classical joint bilateral upsampler applied the way FeatUp applies its JBU
  stack: repeated x2 stages, each taking the previous stage's output, the guidance average-pooled to the stage's
  output size, and a (2r+1) x (2r+1) window of spatial Gaussian x range Gaussian weights, normalised per pixel.
  Unlike FeatUp's stages, the intermediate resize is bilinear (FeatUp: bicubic) and no weight is learned.

Tensors are float, batch-first, channels second: features B x C x h x w, guidance B x 3 x H x W.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------- shared helpers
def window_offsets(radius: int) -> list[tuple[int, int]]:
    """The (row, column) offsets of a (2r+1)^2 window, row-major: tap ``p = i * (2r+1) + j`` is offset
    ``(i - r, j - r)`` (the order ``torch.nn.Unfold`` gives, hence FeatUp's kernel-channel order)."""
    diameter = 2 * radius + 1
    return [(i, j) for i in range(diameter) for j in range(diameter)]


def reflect_pad(x: torch.Tensor, radius: int, what: str) -> torch.Tensor:
    """B x C x H x W -> B x C x (H+2r) x (W+2r), reflected without repeating the edge (FeatUp's padding).
    ValueError (naming ``what``) when H or W <= r, where a reflection is undefined."""
    if min(x.shape[-2:]) <= radius:
        raise ValueError(f"{what} is {x.shape[-2]} x {x.shape[-1]}: too small for a window of radius {radius} "
                         f"(each side must exceed the radius)")
    return F.pad(x, [radius] * 4, mode="reflect")


def weighted_window_sum(padded: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-pixel local filtering: ``out[b, c, y, x] = sum_p kernel[b, p, y, x] * padded[b, c, y + i_p, x + j_p]``.

    padded: B x C x (H+2r) x (W+2r); kernel: B x (2r+1)^2 x H x W, taps in :func:`window_offsets` order.
    Returns B x C x H x W (dtype of ``padded``). One tap at a time (in place), so memory stays O(B C H W)."""
    height, width = kernel.shape[-2:]
    out = torch.zeros(padded.shape[0], padded.shape[1], height, width, dtype=padded.dtype, device=padded.device)
    for p, (i, j) in enumerate(window_offsets(radius)):
        out.addcmul_(kernel[:, p:p + 1], padded[:, :, i:i + height, j:j + width])
    return out


def stage_count(factor: int) -> int:
    """log2(factor) for a power of two >= 2 (the number of x2 stages); ValueError otherwise."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2 or factor & (factor - 1):
        raise ValueError(f"upsampling factor {factor!r} is not a power of two >= 2 (the stages are x2 each)")
    return int(factor).bit_length() - 1


def _as_feature_tensor(features, what: str = "features") -> tuple[torch.Tensor, bool]:
    """(B x C x h x w float tensor, whether the input was a numpy array); ValueError for other shapes/dtypes."""
    was_numpy = isinstance(features, np.ndarray)
    tensor = torch.from_numpy(features) if was_numpy else features
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or not tensor.is_floating_point():
        shape = getattr(features, "shape", None)
        raise ValueError(f"{what} must be a float B x C x h x w array or tensor, got {type(features).__name__} "
                         f"of shape {shape}")
    return tensor, was_numpy


def _like_input(result: torch.Tensor, was_numpy: bool):
    return result.numpy() if was_numpy else result


# ------------------------------------------------------------------------------------------------- upsamplers
def bilinear_upsample(features, factor: int):
    """features B x C x h x w float (tensor or numpy) -> B x C x (factor h) x (factor w), same kind and dtype.

    One ``F.interpolate(mode="bilinear", align_corners=False)`` to the final size (not x2 stages); factor >= 1."""
    tensor, was_numpy = _as_feature_tensor(features)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"upsampling factor {factor!r} is not a positive integer")
    h, w = tensor.shape[-2:]
    out = F.interpolate(tensor, size=(int(factor) * h, int(factor) * w), mode="bilinear", align_corners=False)
    return _like_input(out, was_numpy)


def joint_bilateral_stage(source: torch.Tensor, guidance: torch.Tensor, radius: int = 3,
                          sigma_spatial: float = 1.0, sigma_range: float = 0.1) -> torch.Tensor:
    """One non-learned x2 stage. source B x C x h x w; guidance B x G x 2h x 2w (already at the output size).

    The source is resized bilinearly to 2h x 2w, then every output pixel q is the normalised sum over the window
    offsets d (|d_row|, |d_col| <= radius, reflected at the borders) of
    ``exp(-|d|^2 / (2 sigma_spatial^2)) * exp(-|g(q+d) - g(q)|^2 / (2 sigma_range^2)) * source_2x(q+d)``, with |d| in
    output pixels and |g(q+d) - g(q)| the Euclidean distance over the guidance channels. Returns B x C x 2h x 2w."""
    out_h, out_w = guidance.shape[-2:]
    upsampled = F.interpolate(source, size=(out_h, out_w), mode="bilinear", align_corners=False)
    padded_guidance = reflect_pad(guidance, radius, "the guidance of a joint bilateral stage")
    padded_source = reflect_pad(upsampled, radius, "the output of a joint bilateral stage")
    logits = []
    for i, j in window_offsets(radius):
        colour_gap = (padded_guidance[:, :, i:i + out_h, j:j + out_w] - guidance).square().sum(1)
        spatial = ((i - radius) ** 2 + (j - radius) ** 2) / (2.0 * sigma_spatial ** 2)
        logits.append(-colour_gap / (2.0 * sigma_range ** 2) - spatial)
    # softmax over taps == product of the two Gaussians divided by its sum (and never 0 / 0)
    kernel = torch.softmax(torch.stack(logits, 1), dim=1).to(source.dtype)
    return weighted_window_sum(padded_source, kernel, radius)


def joint_bilateral_upsample(features, guidance, factor: int, radius: int = 3, sigma_spatial: float = 1.0,
                             sigma_range: float = 0.1):
    """Classical joint bilateral upsampling by ``factor`` (a power of two >= 2) in log2(factor) x2 stages.

    features: B x C x h x w float (tensor or numpy; the result is the same kind, dtype of ``features``).
    guidance: B x 3 x H x W float in [0, 1] (e.g. the RGB image the features were computed from, at the backbone's
    input size); stage k pools it with ``adaptive_avg_pool2d`` to (2^k h) x (2^k w), as FeatUp's JBU stack does.
    radius: window half-size in pixels of each stage's output grid; sigma_spatial: spatial Gaussian standard
    deviation in those pixels; sigma_range: range Gaussian standard deviation in guidance units (colour distance
    over the 3 channels). Returns B x C x (factor h) x (factor w). See :func:`joint_bilateral_stage`."""
    tensor, was_numpy = _as_feature_tensor(features)
    guide, _ = _as_feature_tensor(guidance, "guidance")
    stages = stage_count(factor)
    if guide.shape[0] != tensor.shape[0]:
        raise ValueError(f"guidance has {guide.shape[0]} images but features have {tensor.shape[0]}")
    if radius < 1 or sigma_spatial <= 0 or sigma_range <= 0:
        raise ValueError(f"radius must be >= 1 and both sigmas > 0, got radius={radius}, "
                         f"sigma_spatial={sigma_spatial}, sigma_range={sigma_range}")
    guide = guide.to(dtype=torch.float32, device=tensor.device)
    out = tensor
    with torch.no_grad():
        for _ in range(stages):
            size = (2 * out.shape[-2], 2 * out.shape[-1])
            out = joint_bilateral_stage(out, F.adaptive_avg_pool2d(guide, size), radius, sigma_spatial, sigma_range)
    return _like_input(out, was_numpy)
