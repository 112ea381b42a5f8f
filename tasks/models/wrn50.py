"""WideResNet-50-2 adapter for the SAA+ saliency prompt: build (tiny / official checkpoint / full-size seeded random)
and extract layer1..layer3 features, upsampled to the layer-1 grid, concatenated and L2-normalised per location.

The network is torchvision's ``ResNet``: at the official size (``depth`` 50, ``width_factor`` 2) its state_dict keys
and shapes equal both torchvision's and timm's ``wide_resnet50_2``, so either file loads strictly: timm's default tag
``racm_in1k`` (spec ``wrn50-2``, what the official SAA+ ``timm.create_model(..., pretrained=True)`` loads) and
torchvision's IMAGENET1K_V1 file (spec ``wrn50-2-tv``, timm's ``tv_in1k``). The feature path equals the official
``ModelINet`` one (timm ``features_only``, ``out_indices=(1, 2, 3)``, nearest upsampling, concat, L2 norm); the tiny
spec is ``ResNet(BasicBlock, [1, 1, 1, 1])`` (64/128/256 channels in layers 1-3). Checkpoints are read with
``torch.load(weights_only=True)`` only and assigned strictly.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from tasks.models.calls import count_call, count_load
from tasks.models.checkpoint import read_state_dict
from tasks.models.identity import ModelIdentity
from tasks.models.registry import ModelSpec


# ------------------------------------------------------------------------------------------------- building
def build_wrn50_model(spec: ModelSpec) -> ResNet:
    """A torchvision ``ResNet`` with ``spec.arch`` dimensions (weights from the current RNG / default device).

    depth >= 50: Bottleneck blocks, ``width_per_group = 64 * width_factor`` (wide_resnet50_2 for factor 2);
    smaller depths: BasicBlock (which only supports width factor 1)."""
    a = spec.arch
    layers = list(a["layers"])
    if a["depth"] >= 50:
        return ResNet(Bottleneck, layers, width_per_group=64 * a.get("width_factor", 1))
    if a.get("width_factor", 1) != 1:
        raise ValueError(f"model {spec.name!r}: BasicBlock ResNets have no width factor (got {a['width_factor']})")
    return ResNet(BasicBlock, layers)


def build_seeded_wrn50(spec: ModelSpec) -> ResNet:
    """Seeded random weights (``torch.manual_seed(spec.seed)`` in a forked RNG, the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_wrn50_model(spec)


def build_checkpoint_wrn50(spec: ModelSpec, checkpoint: Path) -> ResNet:
    """The architecture on the meta device, then the checkpoint assigned strictly (keys and shapes must match).
    BatchNorm fills in ``num_batches_tracked`` itself for files written before it existed."""
    with torch.device("meta"):
        model = build_wrn50_model(spec)
    model.load_state_dict(read_state_dict(checkpoint), strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"checkpoint {checkpoint} left tensors unset: {left[:5]}")
    return model


def build_wrn50_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity,
                        device: str = "cpu") -> "Wrn50Adapter":
    """Construct the model the identity describes (random recipe or verified local checkpoint); counts one load."""
    if identity.random_weights:
        model = build_seeded_wrn50(spec)
    else:
        from tasks.models.weights import checkpoint_path

        model = build_checkpoint_wrn50(spec, checkpoint_path(spec, models_dir))
    count_load(spec.name)
    return Wrn50Adapter(spec, model, identity, device)


def layer1_grid(size: int) -> int:
    """Side of the layer-1 (stride 4) grid for a size x size input: conv1 (k7 s2 p3), then maxpool (k3 s2 p1)."""
    after_conv = (size - 1) // 2 + 1
    return (after_conv - 1) // 2 + 1


# -------------------------------------------------------------------------------------------------- adapter
class Wrn50Adapter:
    """Dense multi-layer features of one WideResNet (eval mode, inference_mode forwards)."""

    def __init__(self, spec: ModelSpec, model: ResNet, identity: ModelIdentity, device: str = "cpu"):
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def channels(self) -> int:
        """Channels of the concatenated features (256 + 512 + 1024 = 1792 official, 64 + 128 + 256 = 448 tiny)."""
        return int(sum(self.spec.arch["feature_channels"]))

    def _prepare(self, image: np.ndarray, size: int) -> torch.Tensor:
        """H x W x 3 uint8 -> 3 x size x size float32: cv2 bilinear resize, /255, mean/std of the spec."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        resized = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
        return (x - self._mean) / self._std

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x C x h x w: stem, layer1..layer3; layers 2/3 nearest-upsampled to layer 1's grid,
        concatenated along channels, L2-normalised per location."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        f1 = m.layer1(x)
        f2 = m.layer2(f1)
        f3 = m.layer3(f2)
        grid = f1.shape[-2:]
        feats = torch.cat([f1, F.interpolate(f2, size=grid), F.interpolate(f3, size=grid)], dim=1)
        return F.normalize(feats, dim=1)

    def features(self, images: list[np.ndarray], size: int | None = None) -> np.ndarray:
        """images: list of H_i x W_i x 3 uint8 (fed as given; the caller decides RGB/BGR — the official SAA+ code feeds
        BGR). Each is resized to size x size (default ``spec.preprocess.size``); all go through the network as ONE
        batch (one counted call; an empty list makes none). Returns B x C x size/4 x size/4 float32 with unit-norm
        C-vectors (C = :attr:`channels`)."""
        size = int(size or self.spec.preprocess.size)
        if len(images) == 0:
            g = layer1_grid(size)
            return np.zeros((0, self.channels, g, g), np.float32)
        batch = torch.stack([self._prepare(img, size) for img in images]).to(self.device)
        with torch.inference_mode():
            feats = self._forward(batch)
        count_call(self.spec.name)
        return feats.float().cpu().numpy()
