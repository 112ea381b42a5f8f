"""SAM-LAD's per-image stages: upsampled features and object descriptors. Each runs once per image, whether the
image is a query or a reference of many queries (METHODS.md §4.4-4.6).

  upsampled_features  per image: features C x (f*h) x (f*w) float16 (DINOv2 map upsampled x f: FeatUp's JBU, the
                      non-learned joint bilateral substitute, or bilinear; f = 1 copies the map)
                      meta: upsampler, factor
  object_descriptors  per image: objects M x g x g float16 (each kept object's mask, bilinearly resized to the
                      feature grid g: soft weights), descriptors M x C float32 (DCGA, unit rows), areas M float32
                      (area fractions at full resolution), kept M int64 (index in the object masks artifact)
                      meta: height, width, objects (M), masks (before the area filter)
"""
from __future__ import annotations

import numpy as np
import torch

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.models import featup, joint_bilateral
from tasks.sam_lad import dcga, objects

JBU_DEFAULTS = {"radius": 3, "sigma_spatial": 1.0, "sigma_range": 0.1}   # the substitute's kernel (documented)


def _guidance(pixels: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x size x size float in [0, 1] (the backbone's input frame)."""
    import cv2
    resized = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0


@declare_stage("upsampled_features", 1, params=("upsampler", "factor", "feature_size", "jbu"),
               models=("upsampler?",), upstream=("features",), reads_pixels=True)
def upsampled_features(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """DINOv2 maps (upstream, C x h x w) upsampled by ``factor``; guidance: the image at the backbone's input."""
    p = call.params
    feats = np.stack([call.read("features", w.payload, names=["features"]).arrays["features"]
                      for w in batch]).astype(np.float32)
    factor = int(p["factor"])
    if factor == 1:
        up = feats.astype(np.float32)
    elif p["upsampler"] == "featup":
        # FeatUp's DINOv2 upsampler was trained on ChannelNorm'd tokens (its use_norm=True backbone)
        up = call.model("upsampler").upsample(featup.channel_norm(feats), [call.pixels(w.payload) for w in batch],
                                              factor)
    elif p["upsampler"] == "joint_bilateral":
        guide = torch.cat([_guidance(call.pixels(w.payload), p["feature_size"]) for w in batch])
        up = joint_bilateral.joint_bilateral_upsample(torch.from_numpy(feats), guide, factor, **p["jbu"]).numpy()
    else:
        up = joint_bilateral.bilinear_upsample(torch.from_numpy(feats), factor).numpy()
    return [ItemData({"features": u.astype(np.float16)}, {"upsampler": p["upsampler"], "factor": factor})
            for u in up]


def _object_masks(call: StageCall, w: WorkItem, whole_image: bool) -> np.ndarray:
    """M x H x W bool: the upstream masks (SAM's automatic masks or the oracle's), or the whole frame."""
    if whole_image:
        hw = call.pixels(w.payload).shape[:2]
        return np.ones((1, *hw), bool)
    return np.asarray(call.read("objects", w.payload, names=["masks"]).arrays["masks"], bool)


@declare_stage("object_descriptors", 2,
               params=("min_area_fraction", "max_area_fraction", "whole_image", "max_objects", "dcga_mode", "dcga_w",
                       "pool_inside_mask"),
               upstream=("objects?", "features"), reads_pixels=True)
def object_descriptors(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Area filter (largest ``max_objects`` kept), soft masks on the feature grid, pooled features, DCGA."""
    p = call.params
    out = []
    for w in batch:
        masks = _object_masks(call, w, p["whole_image"])
        total = float(masks.shape[1] * masks.shape[2])
        areas = masks.reshape(masks.shape[0], -1 if len(masks) else 0).sum(1) / total
        kept = objects.kept_objects(areas, p["min_area_fraction"], p["max_area_fraction"], p["max_objects"])
        features = np.asarray(call.read("features", w.payload).arrays["features"], np.float32)   # C x g x g
        soft = dcga.resize_masks(masks[kept], features.shape[1:])                                # M x g x g
        pool = "mean" if p["dcga_mode"] == "gap" else "max"
        pooled = dcga.pooled_object_features(masks[kept], features, pool=pool, inside_mask=p["pool_inside_mask"])
        descriptors = dcga.dcga(pooled, w=p["dcga_w"], mode=p["dcga_mode"])
        call.detail.update(objects=len(kept), masks_filtered_out=len(masks) - len(kept))
        out.append(ItemData({"objects": soft.astype(np.float16), "descriptors": descriptors.astype(np.float32),
                             "areas": areas[kept].astype(np.float32), "kept": kept.astype(np.int64)},
                            {"height": int(masks.shape[1]), "width": int(masks.shape[2]), "objects": int(len(kept)),
                             "masks": int(len(masks))}))
    return out
