"""Input of the square-input ViTs (DINOv2, CLIP): the patch grid, and images squashed to size x size."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def patch_grid(size: int, patch_size: int) -> int:
    """Side of the patch grid for a size x size input; size must be a positive multiple of the patch size."""
    if size <= 0 or size % patch_size:
        raise ValueError(f"size {size} is not a positive multiple of the patch size {patch_size}")
    return size // patch_size


def square_batch(images: list[np.ndarray], size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """list of H_i x W_i x 3 uint8 RGB -> B x 3 x size x size float32: PIL bicubic resize (squashed, no crop),
    /255, then (x - mean) / std with mean, std of shape 3 x 1 x 1."""
    out = []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), np.float32) / 255.0
        out.append((torch.from_numpy(resized).permute(2, 0, 1) - mean) / std)
    return torch.stack(out)
