"""DINOv2 adapter (timm layout): build (tiny / official file / full-size seeded random) and return the patch tokens
(and the CLS token) of images.

The network is timm's ``VisionTransformer`` with ``spec.arch`` dimensions; at the official size it is timm's
``vit_small_patch14_dinov2`` (keys and shapes equal the ``model.safetensors`` of ``vit_small_patch14_dinov2.lvd142m``,
LayerScale ``init_values`` 1e-5, no head). ``dynamic_img_size=True``: any multiple of the patch size is accepted
and timm resamples the 518-px position embedding (bicubic). The official file is assigned strictly onto a
meta-device model; timm's ``pretrained=True`` (a hub download) is never used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from tasks.models.calls import count_call, count_load
from tasks.models.checkpoint import load_strict_on_meta
from tasks.models.identity import ModelIdentity
from tasks.models.registry import ModelSpec
from tasks.models.vit_input import patch_grid, square_batch


# ------------------------------------------------------------------------------------------------- building
def build_dinov2_model(spec: ModelSpec) -> VisionTransformer:
    """A timm ViT with ``spec.arch`` dimensions, no classifier head (weights from the current RNG / device)."""
    a = spec.arch
    return VisionTransformer(img_size=a["img_size"], patch_size=a["patch_size"], embed_dim=a["embed_dim"],
                             depth=a["depth"], num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"],
                             init_values=a["init_values"], num_classes=0, dynamic_img_size=True)


def build_seeded_dinov2(spec: ModelSpec) -> VisionTransformer:
    """Seeded random weights (``torch.manual_seed(spec.seed)`` in a forked RNG, the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_dinov2_model(spec)


def build_checkpoint_dinov2(spec: ModelSpec, checkpoint: Path) -> VisionTransformer:
    """The architecture on the meta device, then the checkpoint assigned strictly (keys and shapes must match)."""
    with torch.device("meta"):
        model = build_dinov2_model(spec)
    return load_strict_on_meta(model, checkpoint)


def build_dinov2_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity,
                         device: str = "cpu") -> "Dinov2Adapter":
    """Construct the model the identity describes (random recipe or verified local file); counts one load."""
    if identity.random_weights:
        model = build_seeded_dinov2(spec)
    else:
        from tasks.models.weights import checkpoint_path

        model = build_checkpoint_dinov2(spec, checkpoint_path(spec, models_dir))
    count_load(spec.name)
    return Dinov2Adapter(spec, model, identity, device)


# -------------------------------------------------------------------------------------------------- adapter
class Dinov2Adapter:
    """Patch and CLS tokens of one DINOv2 ViT (eval mode, inference_mode forwards)."""

    def __init__(self, spec: ModelSpec, model: VisionTransformer, identity: ModelIdentity, device: str = "cpu"):
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.patch_size: int = spec.arch["patch_size"]
        self._mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def channels(self) -> int:
        """C of every token (384 for ViT-S/14)."""
        return int(self.spec.arch["embed_dim"])

    def grid(self, size: int) -> int:
        """Side of the token grid for a size x size input; size must be a positive multiple of the patch size."""
        return patch_grid(size, self.patch_size)

    def tokens(self, images: list[np.ndarray], size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """images: list of H_i x W_i x 3 uint8 RGB, each resized to size x size (default ``spec.preprocess.size``);
        all go through the ViT as ONE batch (one counted call; an empty list makes none). Returns
        (B x C x h x w patch tokens, B x C CLS tokens), float32, after the final LayerNorm; h = w = size / patch."""
        size = self.spec.preprocess.size if size is None else int(size)
        g = self.grid(size)
        if len(images) == 0:
            return np.zeros((0, self.channels, g, g), np.float32), np.zeros((0, self.channels), np.float32)
        batch = square_batch(images, size, self._mean, self._std).to(self.device)
        with torch.inference_mode():
            out = self.model.forward_features(batch)  # B x (prefix + g*g) x C
        count_call(self.spec.name)
        prefix = self.model.num_prefix_tokens
        patches = out[:, prefix:].reshape(len(images), g, g, -1).permute(0, 3, 1, 2)
        return patches.float().cpu().numpy(), out[:, 0].float().cpu().numpy()

    def features(self, images: list[np.ndarray], size: int | None = None) -> np.ndarray:
        """B x C x h x w float32 patch tokens of :meth:`tokens` (one counted call)."""
        return self.tokens(images, size)[0]
