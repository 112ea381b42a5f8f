"""SAA+ candidate scoring: property filters on masks (paper form), saliency rescoring, top-K and fusion."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.saa import fusion


@dataclass(frozen=True)
class ScoringRule:
    """How defect candidates become a map. area_threshold / location apply to masks only when asked
    (property_on == "masks" / location_constraint); the official code filters boxes instead."""

    k: int | None = None
    fusion: str = "official"
    rescore_scale: float = 3.0
    property_on_masks: bool = False
    area_threshold: float = 1.0
    location_constraint: bool = False
    location_min_overlap: float = 0.5


def mask_area_filter(masks: np.ndarray, object_masks: np.ndarray, area_threshold: float) -> np.ndarray:
    """Bool N: defect mask area <= θ × the largest object mask's area (the whole image without objects).

    masks N x H x W, object_masks M x H x W."""
    obj = object_masks.reshape(len(object_masks), -1).sum(1).max() if len(object_masks) else masks[0].size
    return masks.reshape(len(masks), -1).sum(1) <= area_threshold * max(int(obj), 1)


def location_filter(masks: np.ndarray, object_masks: np.ndarray, min_overlap: float) -> np.ndarray:
    """Bool N: the share of each defect mask lying on the objects' union is >= min_overlap.

    A literal IoU between a small defect and its object is about their area ratio, which the area prompt
    already bounds; overlap with the object is what "anomalies lie within the object" asks. No object or
    an empty defect mask -> kept."""
    if len(object_masks) == 0:
        return np.ones(len(masks), bool)
    union = object_masks.any(axis=0)
    area = masks.reshape(len(masks), -1).sum(1)
    inside = (masks & union).reshape(len(masks), -1).sum(1)
    return (area == 0) | (inside >= min_overlap * np.maximum(area, 1))


def score_map(masks: np.ndarray, scores: np.ndarray, saliency: np.ndarray | None, object_masks: np.ndarray | None,
              rule: ScoringRule, rescore) -> np.ndarray:
    """masks N x H x W bool, scores N, saliency H x W (or None = no saliency prompt), object_masks M x H x W.

    Returns the H x W anomaly map. ``rescore(scores, masks, saliency, scale)`` is the saliency prompt."""
    keep = np.ones(len(masks), bool)
    if object_masks is not None and rule.property_on_masks:
        keep &= mask_area_filter(masks, object_masks, rule.area_threshold)
    if object_masks is not None and rule.location_constraint:
        keep &= location_filter(masks, object_masks, rule.location_min_overlap)
    masks, scores = masks[keep], scores[keep].astype(np.float32)
    if len(masks) == 0:
        return np.zeros(masks.shape[1:], np.float32)
    if saliency is not None:
        scores = rescore(scores, masks, saliency, rule.rescore_scale).astype(np.float32)
    top = fusion.top_k(scores, rule.k)
    return fusion.fuse_masks(masks[top], scores[top], rule.fusion)
