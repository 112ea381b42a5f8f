"""FeatUp's JBU upsampler stack (Fu et al., ICLR 2024; ``mhamilton723/FeatUp``), re-implemented from the official
``featup/upsamplers.py`` (``JBULearnedRange``, ``JBUStack``) so that the official checkpoint loads strictly.

Architecture (``spec.arch``: feat_dim C, key_dim K = 32, radius r = 3, stages = 4, guidance_dim G = 3), D = 2r+1:

* a stage (``up1`` .. ``up4``) maps source B x C x h x w and guidance B x G x H x W (H = 2h) to B x C x H x W:
  - range kernel: ``range_proj`` = 1x1 conv G->K, GELU, Dropout2d(0.1), 1x1 conv K->K on the guidance; for each
    pixel q and tap p of the D x D window (reflect padding), logit = exp(range_temp) (clamped to [1e-4, 1e4]) *
    <proj(q + d_p), proj(q)>, softmax over the D^2 taps;
  - spatial kernel: exp(-(u_i^2 + u_j^2) / (2 sigma_spatial^2)) with u = linspace(-1, 1, D) (offsets in units of
    the radius), ``sigma_spatial`` learned (init 1.0);
  - product, divided by its sum over taps (clamped >= 1e-7), then ``+ 0.1 * fixup_proj([kernel, guidance])`` with
    ``fixup_proj`` = 1x1 conv (D^2 + G)->D^2, GELU, Dropout2d(0.1), 1x1 conv D^2->D^2 (no renormalisation after);
  - the source resized bicubically (align_corners=False) to H x W, reflect-padded by r, filtered per pixel with
    that kernel (taps row-major: p = i D + j is row offset i - r, column offset j - r).
* the stack: stage k gets the guidance average-pooled (``adaptive_avg_pool2d``) to twice its source's size; after
  the last stage, ``out + 0.1 * fixup_proj(out)`` with ``fixup_proj`` = Dropout2d(0.2), 1x1 conv C->C.

State-dict keys (= the official ``JBUStack``'s): ``up{k}.range_temp`` (), ``up{k}.sigma_spatial`` (),
``up{k}.range_proj.{0,3}.{weight,bias}``, ``up{k}.fixup_proj.{0,3}.{weight,bias}``, ``fixup_proj.1.{weight,bias}``.
The official file ``dinov2_jbu_stack_cocostuff.ckpt`` is a PyTorch Lightning checkpoint whose ``state_dict`` holds
these under ``upsampler.`` next to the DINOv2 backbone (``model.0.``), the ChannelNorm (``model.1.``), the training
downsampler (``downsampler.``) and uncertainty net (``scale_net.``); only ``upsampler.*`` is read (FeatUp's own
hub loader drops the latter two and the backbone is anomflow's DINOv2 model), and it must match exactly.

The features FeatUp's DINOv2 stack was trained on are ``x_norm_patchtokens`` followed by ``ChannelNorm`` (a
LayerNorm over channels; with ``use_norm=True``): :func:`channel_norm` reproduces it. The guidance is the backbone's
input image, ImageNet-normalised (FeatUp's ``norm``), i.e. what :func:`tasks.models.vit_input.square_batch` feeds
DINOv2 in anomflow (PIL bicubic squash to h * 14 pixels).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.models.calls import count_call, count_load
from tasks.models.checkpoint import read_state_dict
from tasks.models.identity import ModelIdentity
from tasks.models.joint_bilateral import reflect_pad, stage_count, weighted_window_sum, window_offsets
from tasks.models.registry import ModelSpec
from tasks.models.vit_input import square_batch

CHECKPOINT_PREFIX = "upsampler."   # where the official Lightning checkpoint keeps the JBU stack
FIXUP_SCALE = 0.1                  # both fixups are added with weight 0.1 in the official code
FACTORS = (2, 4, 8, 16)


# ---------------------------------------------------------------------------------------------------- modules
class JBUStage(nn.Module):
    """One learned joint bilateral x2 stage (the official ``JBULearnedRange``; keys and shapes identical)."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3):
        super().__init__()
        self.radius = radius
        taps = (2 * radius + 1) ** 2
        # creation order as the official module (range_temp, range_proj, fixup_proj, sigma_spatial)
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(taps, taps, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def spatial_kernel(self) -> torch.Tensor:
        """1 x D^2 x 1 x 1: exp(-(u_i^2 + u_j^2) / (2 sigma^2)), u = linspace(-1, 1, D), taps row-major."""
        diameter = 2 * self.radius + 1
        u = torch.linspace(-1.0, 1.0, diameter, device=self.sigma_spatial.device)
        squared = (u[:, None].square() + u[None, :].square()).reshape(1, -1, 1, 1)
        return torch.exp(-squared / (2 * self.sigma_spatial.square()))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """guidance B x G x H x W -> B x D^2 x H x W: softmax over taps of temperature x key dot products."""
        keys = self.range_proj(guidance)
        padded = reflect_pad(keys, self.radius, "the guidance of a JBU stage")
        height, width = keys.shape[-2:]
        logits = torch.stack([(padded[:, :, i:i + height, j:j + width] * keys).sum(1)
                              for i, j in window_offsets(self.radius)], dim=1)
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return torch.softmax(temperature * logits, dim=1)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """B x D^2 x H x W: the per-pixel filter (range x spatial, normalised, plus 0.1 x the learned fixup)."""
        combined = self.range_kernel(guidance) * self.spatial_kernel()
        combined = combined / combined.sum(1, keepdim=True).clamp(min=1e-7)
        return combined + FIXUP_SCALE * self.fixup_proj(torch.cat([combined, guidance], dim=1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """source B x C x h x w, guidance B x G x H x W (the output size) -> B x C x H x W."""
        if source.shape[0] != guidance.shape[0]:
            raise ValueError(f"JBU stage: {source.shape[0]} feature maps but {guidance.shape[0]} guidance images")
        size = tuple(guidance.shape[-2:])
        upsampled = F.interpolate(source, size=size, mode="bicubic", align_corners=False)
        padded = reflect_pad(upsampled, self.radius, "the output of a JBU stage")
        return weighted_window_sum(padded, self.kernel(guidance), self.radius)


class JBUStack(nn.Module):
    """``stages`` JBU x2 stages (``up1`` ..) and the final 1x1 fixup (the official ``JBUStack``)."""

    def __init__(self, feat_dim: int, key_dim: int = 32, radius: int = 3, stages: int = 4, guidance_dim: int = 3):
        super().__init__()
        self.stage_names = [f"up{k}" for k in range(1, stages + 1)]
        for name in self.stage_names:
            self.add_module(name, JBUStage(guidance_dim, key_dim, radius))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, 1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor, stages: int | None = None,
                apply_fixup: bool | None = None) -> torch.Tensor:
        """source B x C x h x w, guidance B x G x H x W (any size; pooled per stage) -> B x C x (2^s h) x (2^s w).

        stages: how many stages to run (default all); apply_fixup: add the final fixup (default: only when every
        stage ran, which is the official forward)."""
        stages = len(self.stage_names) if stages is None else stages
        if not 1 <= stages <= len(self.stage_names):
            raise ValueError(f"stages must be in 1..{len(self.stage_names)}, got {stages}")
        if apply_fixup is None:
            apply_fixup = stages == len(self.stage_names)
        out = source
        for name in self.stage_names[:stages]:
            pooled = F.adaptive_avg_pool2d(guidance, (2 * out.shape[-2], 2 * out.shape[-1]))
            out = getattr(self, name)(out, pooled)
        if apply_fixup:
            out = out + FIXUP_SCALE * self.fixup_proj(out)
        return out


def channel_norm(features: np.ndarray) -> np.ndarray:
    """FeatUp's ``ChannelNorm`` (``use_norm=True``): B x C x h x w float -> LayerNorm over C at every position
    (eps 1e-5, weight 1, bias 0: FeatUp's optimiser never updates that LayerNorm), float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if tensor.ndim != 4:
        raise ValueError(f"channel_norm expects B x C x h x w features, got shape {tuple(tensor.shape)}")
    normed = F.layer_norm(tensor.permute(0, 2, 3, 1), (tensor.shape[1],), eps=1e-5)
    return normed.permute(0, 3, 1, 2).contiguous().numpy()


# ---------------------------------------------------------------------------------------------------- building
def build_featup_model(spec: ModelSpec) -> JBUStack:
    """A JBU stack with ``spec.arch`` dimensions (weights from the current RNG / device)."""
    a = spec.arch
    return JBUStack(a["feat_dim"], a["key_dim"], a["radius"], a["stages"], a["guidance_dim"])


def build_seeded_featup(spec: ModelSpec) -> JBUStack:
    """Seeded random weights (``torch.manual_seed(spec.seed)`` in a forked RNG, the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_featup_model(spec)


def jbu_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The JBU stack's tensors of a checkpoint's state dict: the ``upsampler.*`` entries (prefix removed) of
    FeatUp's Lightning checkpoint, or the whole dict when no key has that prefix (a file saved from a
    :class:`JBUStack`)."""
    if any(k.startswith(CHECKPOINT_PREFIX) for k in state):
        return {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
    return dict(state)


def build_checkpoint_featup(spec: ModelSpec, checkpoint: Path) -> JBUStack:
    """The architecture on the meta device, then the checkpoint's JBU tensors assigned strictly: a missing,
    extra or differently shaped tensor raises RuntimeError naming it (and the file)."""
    try:
        state = read_state_dict(Path(checkpoint))
    except pickle.UnpicklingError as exc:
        raise ValueError(f"checkpoint {checkpoint} holds objects other than tensors and plain containers, which "
                         f"anomflow does not unpickle; save its 'state_dict' with torch.save and import that "
                         f"file instead ({exc})") from None
    with torch.device("meta"):
        model = build_featup_model(spec)
    try:
        model.load_state_dict(jbu_state_dict(state), strict=True, assign=True)
    except RuntimeError as exc:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the {spec.name} JBU stack: {exc}") from None
    return model


def build_featup_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity,
                         device: str = "cpu") -> "FeatUpAdapter":
    """Construct the model the identity describes (random recipe or verified local file); counts one load."""
    if identity.random_weights:
        model = build_seeded_featup(spec)
    else:
        from tasks.models.weights import checkpoint_path

        model = build_checkpoint_featup(spec, checkpoint_path(spec, models_dir))
    count_load(spec.name)
    return FeatUpAdapter(spec, model, identity, device)


# ----------------------------------------------------------------------------------------------------- adapter
class FeatUpAdapter:
    """Upsamples backbone feature maps with the JBU stack, guided by the images (eval mode, inference_mode)."""

    def __init__(self, spec: ModelSpec, model: JBUStack, identity: ModelIdentity, device: str = "cpu"):
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.patch_size: int = spec.arch["patch_size"]
        self._mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def channels(self) -> int:
        """C the stack was built for (384 for DINOv2 ViT-S/14)."""
        return int(self.spec.arch["feat_dim"])

    @property
    def max_factor(self) -> int:
        """2 ** stages (16 for the official stack)."""
        return 2 ** int(self.spec.arch["stages"])

    def guidance(self, images: list[np.ndarray], grid: int) -> torch.Tensor:
        """images: list of H_i x W_i x 3 uint8 RGB -> B x 3 x S x S float32, S = grid x patch size (224 for a 16 x 16
        DINOv2 grid): the backbone's own input (PIL bicubic squash, /255, ImageNet mean/std), on the CPU."""
        return square_batch(images, grid * self.patch_size, self._mean, self._std)

    def upsample(self, features: np.ndarray, images: list[np.ndarray], factor: int,
                 apply_fixup: bool | None = None) -> np.ndarray:
        """features: B x C x h x w float (h == w, the backbone's grid; pass :func:`channel_norm`'d DINOv2 tokens as
        FeatUp's ``use_norm=True`` backbone does); images: the B H x W x 3 uint8 RGB images they came from; factor:
        2, 4, 8 or 16 (at most 2 ** stages) -> B x C x (factor h) x (factor w) float32, running the first
        log2(factor) stages in ONE counted call (an empty batch makes none).

        apply_fixup: add the stack's final 1x1 fixup after the last stage run. None (default) = only at factor 16,
        where all stages ran (the official forward); below x16 the official code gives no rule, and METHODS.md
        §4.4 (UNVERIFIED) runs stages 1-3 without the fixup for x8. True / False force it either way."""
        features = np.asarray(features)
        if features.ndim != 4 or features.dtype.kind != "f":
            raise ValueError(f"features must be a float B x C x h x w array, got {features.dtype} {features.shape}")
        batch, channels, h, w = features.shape
        if channels != self.channels:
            raise ValueError(f"{self.spec.name} upsamples {self.channels}-channel features, got {channels}")
        if h != w:
            raise ValueError(f"features are {h} x {w}: the backbone's grid must be square (its input is)")
        if len(images) != batch:
            raise ValueError(f"{len(images)} images for {batch} feature maps: one guidance image per map is needed")
        if factor not in FACTORS or factor > self.max_factor:
            allowed = ", ".join(str(f) for f in FACTORS if f <= self.max_factor)
            raise ValueError(f"upsampling factor {factor!r} is not one of {allowed}")
        stages = stage_count(factor)
        if batch == 0:
            return np.zeros((0, channels, factor * h, factor * w), np.float32)
        guidance = self.guidance(images, h).to(self.device)
        source = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.model(source, guidance, stages=stages, apply_fixup=apply_fixup)
        count_call(self.spec.name)
        return out.float().cpu().numpy()
