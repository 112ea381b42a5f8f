"""A per-patch linear (logistic) probe: the anomaly probability of each feature-grid cell from its C-dim feature.

The smallest real trainable of ``tasks.engine.training``: p = sigmoid(w . f + b) per cell, trained with
BCE-with-logits (a positive-class weight for the rare anomalous cells) by Adam on shuffled mini-batches.

Artifacts:
  probe_features  per image (mask side input): features C x h x w float32 (WRN layer-1 grid, unit-norm cells),
                  target h x w float32 (fraction of the cell's pixels inside the ground-truth mask; 0 for good)
  linear_probe    a training artifact (tasks.engine.training): epoch-NNNN checkpoints {weight C, bias 1,
                  opt.*, rng.torch}; final {weight C float32, bias 1 float32}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stores import ArtifactRef, ArtifactStore, ItemData
from stores.keys import canonical_json, sha256_text
from stores.runs import new_run_id
from tasks.datasets import load_dataset, read_mask
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.inputs import HashCache, prepare_images
from tasks.engine.runner import StageDef, WorkItem, image_item
from tasks.engine.stage import StageCall, declare_stage
from tasks.engine.training import load_optimizer_arrays, optimizer_arrays, tensor_array

FEATURES_STAGE = "probe_features"
PROBE_STAGE = "linear_probe"


@dataclass(frozen=True)
class ProbeConfig:
    """lr: Adam step size; pos_weight: BCE weight of anomalous cells; batch_size: cells per step;
    init_scale: std of the initial weight vector (drawn from the seeded generator)."""

    lr: float = 0.01
    pos_weight: float = 1.0
    batch_size: int = 256
    init_scale: float = 0.01


@dataclass
class ProbeState:
    weight: torch.Tensor                 # C float32, requires grad
    bias: torch.Tensor                   # 1 float32, requires grad
    optimizer: torch.optim.Optimizer     # Adam over (weight, bias)


class LinearProbe:
    """Trainable probe over fixed data: features N x C x h x w float32, targets N x h x w in [0, 1]."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, config: ProbeConfig = ProbeConfig()):
        if features.ndim != 4 or targets.shape != (features.shape[0], *features.shape[2:]):
            raise ValueError(f"features N x C x h x w and targets N x h x w expected, got {features.shape} "
                             f"and {targets.shape}")
        self.config = config
        self.channels = features.shape[1]
        # one row per cell: (N * h * w) x C and (N * h * w)
        self.x = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 2, 3, 1), np.float32)
                                  .reshape(-1, self.channels))
        self.y = torch.from_numpy(np.ascontiguousarray(targets, np.float32).reshape(-1))
        self.pos_weight = torch.tensor(float(config.pos_weight))

    def _state(self, weight: torch.Tensor, bias: torch.Tensor) -> ProbeState:
        weight, bias = weight.requires_grad_(), bias.requires_grad_()
        return ProbeState(weight, bias, torch.optim.Adam([weight, bias], lr=self.config.lr))

    def init_state(self, generator: torch.Generator) -> ProbeState:
        weight = torch.randn(self.channels, generator=generator) * self.config.init_scale
        return self._state(weight, torch.zeros(1))

    def train_epoch(self, state: ProbeState, epoch: int, generator: torch.Generator) -> tuple[ProbeState, dict]:
        """One pass over the cells in a generator-drawn order. Metrics: mean batch loss of the pass, and
        loss / accuracy (logit > 0 vs target > 0.5) of all cells after it."""
        order = torch.randperm(len(self.y), generator=generator)
        total = 0.0
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            loss = F.binary_cross_entropy_with_logits(self.x[rows] @ state.weight + state.bias, self.y[rows],
                                                      pos_weight=self.pos_weight)
            state.optimizer.zero_grad()
            loss.backward()
            state.optimizer.step()
            total += float(loss.detach()) * len(rows)
        with torch.no_grad():
            logits = self.x @ state.weight + state.bias
            after = F.binary_cross_entropy_with_logits(logits, self.y, pos_weight=self.pos_weight)
            accuracy = ((logits > 0) == (self.y > 0.5)).float().mean()
        return state, {"loss": total / len(order), "loss_after": float(after), "accuracy": float(accuracy)}

    def state_arrays(self, state: ProbeState) -> dict[str, np.ndarray]:
        return {**self.weight_arrays(state), **optimizer_arrays(state.optimizer)}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> ProbeState:
        state = self._state(torch.from_numpy(np.array(arrays["weight"], np.float32)),
                            torch.from_numpy(np.array(arrays["bias"], np.float32)))
        load_optimizer_arrays(state.optimizer, arrays)
        return state

    def weight_arrays(self, state: ProbeState) -> dict[str, np.ndarray]:
        return {"weight": tensor_array(state.weight), "bias": tensor_array(state.bias)}


def probe_map(weights: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Anomaly probability per cell: weights {weight C, bias 1}, features N x C x h x w -> N x h x w float32."""
    w = torch.from_numpy(np.asarray(weights["weight"], np.float32))
    b = torch.from_numpy(np.asarray(weights["bias"], np.float32))
    logits = torch.einsum("nchw,c->nhw", torch.from_numpy(np.asarray(features, np.float32)), w) + b
    return torch.sigmoid(logits).numpy()


# ------------------------------------------------------------------------------------------ training data
def mask_fraction(mask: np.ndarray | None, hw: tuple[int, int], grid: int) -> np.ndarray:
    """H x W bool mask (None: no defect) -> grid x grid float32 fraction of defect pixels per cell."""
    if mask is None:
        return np.zeros((grid, grid), np.float32)
    return cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)


@declare_stage(FEATURES_STAGE, 2, params=("size", "target"), models=("backbone",), side_inputs=("mask",),
               reads_pixels=True)
def probe_features(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Per image: WRN features C x h x w and the target h x w (fraction of defect pixels per cell)."""
    model = call.model("backbone")
    pixels = [call.pixels(w.payload) for w in batch]
    out = []
    for w, img, f in zip(batch, pixels, model.features(pixels, call.params["size"])):
        rec = w.payload.record
        mask = read_mask(rec.mask_path, img.shape[:2], root=call.ctx.dataset_root) if rec.mask_path else None
        out.append(ItemData({"features": f, "target": mask_fraction(mask, img.shape[:2], f.shape[-1])}))
    return out


def cache_probe_features(store: ArtifactStore, dataset_root: str, categories: list[str] | None = None,
                         split: str = "test", size: int = 64, backbone: str = "tiny-wrn50",
                         models_dir: str | None = None, random_weights: bool = False,
                         run_id: str | None = None) -> tuple[ArtifactRef, list[ImageItem]]:
    """WRN features and grid targets of an MVTec-layout dataset's images, as the ``probe_features`` artifact.

    Returns the artifact and its images (in dataset order, the order the probe trains on)."""
    records = load_dataset("mvtec", dataset_root, categories, split)
    images, failures = prepare_images(records, dataset_root, HashCache(store.index, dataset_root), ("mask",))
    if failures:
        raise RuntimeError(f"probe features: unreadable images {failures}")
    ctx = RunContext(store_url=store.url, models_dir=str(models_dir or ""), dataset_root=dataset_root,
                     random_weights=random_weights, batch_size=8, progress=False, run_id=run_id or new_run_id())
    result = probe_features.run(ctx, images, params={"size": size, "target": "mask-fraction-area"},
                                models={"backbone": backbone})
    if result.failures:
        raise RuntimeError(f"probe features failed: {result.failures}")
    return result.ref, images


def load_probe_data(store: ArtifactStore, features: ArtifactRef,
                    images: list[ImageItem]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features N x C x h x w, targets N x h x w, item ids) of ``images`` from a ``probe_features`` artifact."""
    view = store.open(features)
    ids = [image_item(features, i) for i in images]
    view.prefetch(ids)
    items = [view.read(i) for i in ids]
    return (np.stack([d.arrays["features"] for d in items]).astype(np.float32),
            np.stack([d.arrays["target"] for d in items]).astype(np.float32), ids)


def probe_stage(features: ArtifactRef, item_ids: list[str], seed: int, epochs: int,
                config: ProbeConfig = ProbeConfig()) -> StageDef:
    """The training stage of a probe on these items of ``features``: everything that decides its weights."""
    params: dict[str, Any] = {"seed": seed, "epochs": epochs, **asdict(config),
                              "items": sha256_text(canonical_json(list(item_ids)))}
    return StageDef(PROBE_STAGE, 1, params, upstream=(features,))
