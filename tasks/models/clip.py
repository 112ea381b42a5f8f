"""CLIP adapter (open_clip layout): build (tiny / official file / full-size seeded random), encode images to a global
embedding plus patch tokens, and encode prompts to L2-normalised text embeddings.

The network is open_clip's ``CLIP`` built from ``spec.arch`` (an open_clip model config plus ``quick_gelu``): at
the official sizes its keys and shapes equal open_clip's ``ViT-L-14-336`` / ``ViT-B-16-plus-240``. Official files
are assigned strictly onto a meta-device model; ``open_clip.create_model(..., pretrained=<tag>)`` (a hub download)
is never used. Patch tokens are what open_clip's ``VisionTransformer`` returns with ``output_tokens=True`` (the
tokens WinCLIP / anomalib take): after ``ln_post``, not projected. Other input sizes than the architecture's
resample the position embedding like open_clip's ``resize_pos_embed`` (bicubic, antialias).
The tokenizer is open_clip's ``SimpleTokenizer``, whose BPE vocabulary ships inside the open_clip package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import VisionTransformer

from tasks.models.calls import count_call, count_load
from tasks.models.checkpoint import load_strict_on_meta
from tasks.models.identity import ModelIdentity
from tasks.models.registry import ModelSpec
from tasks.models.vit_input import patch_grid, square_batch


# ------------------------------------------------------------------------------------------------- building
def build_clip_model(spec: ModelSpec) -> CLIP:
    """An open_clip ``CLIP`` with ``spec.arch`` (weights from the current RNG / default device)."""
    a = spec.arch
    return CLIP(embed_dim=a["embed_dim"], vision_cfg=dict(a["vision_cfg"]), text_cfg=dict(a["text_cfg"]),
                quick_gelu=a["quick_gelu"])


def build_seeded_clip(spec: ModelSpec) -> CLIP:
    """Seeded random weights (``torch.manual_seed(spec.seed)`` in a forked RNG, the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_clip_model(spec)


def causal_mask(n: int) -> torch.Tensor:
    """n x n additive mask of the text transformer: -inf above the diagonal (open_clip's build_causal_mask)."""
    return torch.full((n, n), float("-inf")).triu_(1)


def build_checkpoint_clip(spec: ModelSpec, checkpoint: Path) -> CLIP:
    """The architecture on the meta device, then the checkpoint assigned strictly (keys and shapes must match).
    The causal mask is a non-persistent buffer (in no checkpoint): rebuilt on the CPU first."""
    with torch.device("meta"):
        model = build_clip_model(spec)
    model.register_buffer("attn_mask", causal_mask(model.context_length), persistent=False)
    return load_strict_on_meta(model, checkpoint)


def build_clip_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity, device: str = "cpu") -> "ClipAdapter":
    """Construct the model the identity describes (random recipe or verified local file); counts one load."""
    if identity.random_weights:
        model = build_seeded_clip(spec)
    else:
        from tasks.models.weights import checkpoint_path

        model = build_checkpoint_clip(spec, checkpoint_path(spec, models_dir))
    count_load(spec.name)
    return ClipAdapter(spec, model, SimpleTokenizer(context_length=spec.arch["text_cfg"]["context_length"]),
                       identity, device)


# -------------------------------------------------------------------------------------------------- adapter
class ClipAdapter:
    """Image and text embeddings of one CLIP model (eval mode, inference_mode forwards)."""

    def __init__(self, spec: ModelSpec, model: CLIP, tokenizer: SimpleTokenizer, identity: ModelIdentity,
                 device: str = "cpu"):
        v = model.visual
        if not (isinstance(v, VisionTransformer) and v.attn_pool is None and v.pool_type == "tok"
                and not v.final_ln_after_pool and v.proj is not None):
            raise ValueError(f"model {spec.name!r}: only ViT towers with a class token and a projection are supported")
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.patch_size: int = spec.arch["vision_cfg"]["patch_size"]
        self._mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def embed_dim(self) -> int:
        """D of the global image and text embeddings (768 for ViT-L-14-336, 640 for ViT-B-16-plus-240)."""
        return int(self.spec.arch["embed_dim"])

    @property
    def token_dim(self) -> int:
        """D' of the patch tokens: the vision width (1024 / 896)."""
        return int(self.spec.arch["vision_cfg"]["width"])

    def grid(self, size: int) -> int:
        """Side of the patch grid for a size x size input; size must be a positive multiple of the patch size."""
        return patch_grid(size, self.patch_size)

    def _position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """(1 + gh*gw) x W: the learned embedding, its grid part resampled when (gh, gw) is not the trained grid."""
        v = self.model.visual
        pos = v.positional_embedding
        if (gh, gw) == tuple(v.grid_size):
            return pos
        h0, w0 = v.grid_size
        grid = pos[1:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])

    def _visual(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x S x S -> (B x D projected class token, B x N x W patch tokens): open_clip's VisionTransformer
        forward with ``output_tokens=True``, the position embedding fitted to the input's grid."""
        v = self.model.visual
        x = v.conv1(x)  # B x W x gh x gw
        b, width, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # B x N x W
        x = torch.cat([v.class_embedding.to(x.dtype).expand(b, 1, width), x], dim=1)
        x = x + self._position_embedding(gh, gw).to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        x = v.ln_post(v.transformer(x))
        return x[:, 0] @ v.proj, x[:, 1:]

    def encode_image_tokens(self, images: list[np.ndarray], size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """images: list of H_i x W_i x 3 uint8 RGB, each resized to size x size (default ``spec.preprocess.size``);
        all go through the vision tower as ONE batch (one counted call; an empty list makes none). Returns
        (B x D global embeddings, not normalised; B x N x D' patch tokens, N = (size / patch)^2), float32."""
        size = self.spec.preprocess.size if size is None else int(size)
        g = self.grid(size)
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), np.float32), np.zeros((0, g * g, self.token_dim), np.float32)
        batch = square_batch(images, size, self._mean, self._std).to(self.device)
        with torch.inference_mode():
            pooled, tokens = self._visual(batch)
        count_call(self.spec.name)
        return pooled.float().cpu().numpy(), tokens.float().cpu().numpy()

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """T x context_length int64 token ids (start/end tokens, zero padded, truncated to the context length)."""
        return self.tokenizer(list(prompts)).numpy().astype(np.int64)

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        """T x D float32 L2-normalised text embeddings, all prompts in ONE forward (one counted call; no prompt,
        no call)."""
        if len(prompts) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        ids = torch.as_tensor(self.tokenize(prompts), device=self.device)
        with torch.inference_mode():
            emb = self.model.encode_text(ids, normalize=True)
        count_call(self.spec.name)
        return emb.float().cpu().numpy()
