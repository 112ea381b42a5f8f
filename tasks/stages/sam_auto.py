"""SAM automatic masks on the cached image embedding: segment-anything's ``SamAutomaticMaskGenerator``, one crop.

  sam_automatic_masks  per image: masks M x H x W bool, scores M float32 (SAM's predicted IoU),
                       stability M float32 (stability score), boxes M x 4 float32 xyxy (inclusive pixel indices,
                       as segment-anything's ``batched_mask_to_box``), points M x 2 float32 (x, y px of the grid
                       point that prompted the mask)                        meta: height, width, prompts
                       Masks are sorted by predicted IoU, descending (ties: grid order, then SAM's mask slot).

The embedding is read from the ``image_embedding`` artifact (upstream ``embeddings``), never recomputed, so every
SAM stage of an image shares one encoder pass. The algorithm is the generator's with ``crop_n_layers=0``:

1. prompts: the ``points_per_side``^2 grid of ``build_point_grid`` scaled to the image, one positive point each,
   decoded ``points_per_batch`` at a time with ``multimask_output=True`` (3 masks per point), as logits upscaled
   to H x W (``SamPredictor.predict_torch``);
2. per batch: keep predicted IoU > ``pred_iou_thresh`` (only if that is > 0), stability score (IoU of the masks
   cut at threshold +- ``stability_score_offset``) >= ``stability_score_thresh`` (only if > 0); binarise at
   SAM's ``mask_threshold``; boxes around the masks;
3. box NMS at ``box_nms_thresh``, scored by predicted IoU (``torchvision.ops.batched_nms``, one category);
4. if ``min_mask_region_area`` > 0: holes, then islands, smaller than it are removed and NMS runs again, preferring
   unchanged masks, at max(box_nms_thresh, 0.7) (segment-anything's ``postprocess_small_regions`` itself; 0.7 is
   the generator's default crop_nms_thresh, which it uses there even with a single crop);
5. anomflow's addition for SAM-LAD: keep masks whose area / (H * W) lies in [min_area_fraction, max_area_fraction].

The crop-edge filter of step 2 is a no-op with the single full-image crop and is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import (MaskData, batch_iterator, batched_mask_to_box, build_point_grid,
                                        calculate_stability_score, mask_to_rle_pytorch, rle_to_mask)
from torchvision.ops import batched_nms

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.models.calls import count_call

SAM_CROP_NMS_THRESH = 0.7   # SamAutomaticMaskGenerator's default crop_nms_thresh (used by its small-region NMS)
MASKS_PER_POINT = 3         # multimask output

# points B x 2 (x, y px) -> (logits B x 3 x H x W, predicted IoU B x 3)
DecodePoints = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MaskGeneratorRule:
    """The generator's parameters (segment-anything's defaults) plus the area fractions SAM-LAD filters by."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    min_area_fraction: float = 0.0
    max_area_fraction: float = 1.0

    def __post_init__(self):
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError(f"points_per_side and points_per_batch must be >= 1, got {self.points_per_side}, "
                             f"{self.points_per_batch}")


DEFAULT_PARAMS = dict(vars(MaskGeneratorRule()))   # every parameter of the stage, at its default


def point_grid(points_per_side: int, hw: tuple[int, int]) -> np.ndarray:
    """N x 2 (x, y) px: segment-anything's normalised grid scaled by the image's (w, h)."""
    return build_point_grid(points_per_side) * np.array(hw[::-1])[None]


def filter_candidates(logits: torch.Tensor, iou_preds: torch.Tensor, points: np.ndarray, first_index: int,
                      rule: MaskGeneratorRule, mask_threshold: float = 0.0) -> MaskData:
    """One decoded batch (logits B x 3 x H x W, iou_preds B x 3, points B x 2) -> surviving candidates.

    As the generator's ``_process_batch``: IoU filter, stability filter, binarise, boxes. ``index`` numbers each
    candidate in prompt order (point * 3 + slot, from ``first_index``): the tie-break of the final order."""
    n = logits.shape[0] * logits.shape[1]
    data = MaskData(masks=logits.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                    points=torch.as_tensor(np.repeat(points, logits.shape[1], axis=0)),
                    index=torch.arange(first_index, first_index + n))
    if rule.pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > rule.pred_iou_thresh)
    data["stability_score"] = calculate_stability_score(data["masks"], mask_threshold, rule.stability_score_offset)
    if rule.stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= rule.stability_score_thresh)
    data["masks"] = data["masks"] > mask_threshold
    data["boxes"] = batched_mask_to_box(data["masks"])
    return data


def select_masks(data: MaskData, rule: MaskGeneratorRule, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Candidates of every batch -> the stage's arrays: NMS, small regions, area fractions, sorted by IoU."""
    if len(data["iou_preds"]) == 0:
        return _arrays(np.zeros((0, *hw), bool), np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, 2)))
    keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                       iou_threshold=rule.box_nms_thresh)
    data.filter(keep)
    if rule.min_mask_region_area > 0:   # segment-anything's own step, on RLEs as it wants them
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        data = SamAutomaticMaskGenerator.postprocess_small_regions(
            data, rule.min_mask_region_area, max(rule.box_nms_thresh, SAM_CROP_NMS_THRESH))
        data["masks"] = torch.stack([torch.from_numpy(rle_to_mask(r)) for r in data["rles"]])
    masks = data["masks"].cpu().numpy()
    fraction = masks.reshape(len(masks), -1).sum(1) / float(hw[0] * hw[1])
    inside = (fraction >= rule.min_area_fraction) & (fraction <= rule.max_area_fraction)
    iou = data["iou_preds"].cpu().numpy()
    order = [i for i in np.lexsort((data["index"].cpu().numpy(), -iou)) if inside[i]]
    pick = (lambda name: data[name].cpu().numpy()[order])
    return _arrays(masks[order], iou[order], pick("stability_score"), pick("boxes"), pick("points"))


def _arrays(masks, scores, stability, boxes, points) -> dict[str, np.ndarray]:
    return {"masks": np.asarray(masks, bool), "scores": np.asarray(scores, np.float32),
            "stability": np.asarray(stability, np.float32), "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "points": np.asarray(points, np.float32).reshape(-1, 2)}


def automatic_masks(decode: DecodePoints, hw: tuple[int, int], rule: MaskGeneratorRule,
                    mask_threshold: float = 0.0) -> dict[str, np.ndarray]:
    """The whole algorithm for one image, given a point decoder (SAM on a cached embedding, or a test's oracle)."""
    candidates = MaskData()
    first = 0
    for (points,) in batch_iterator(rule.points_per_batch, point_grid(rule.points_per_side, hw)):
        logits, iou_preds = decode(points)
        kept = filter_candidates(logits.float(), iou_preds.float(), points, first, rule, mask_threshold)
        for name, value in list(kept.items()):   # filtered where decoded (GPU); only survivors come back
            kept[name] = value.cpu()
        candidates.cat(kept)
        first += len(points) * MASKS_PER_POINT
    return select_masks(candidates, rule, hw)


def embedding_decoder(sam, embedding: np.ndarray, hw: tuple[int, int]) -> DecodePoints:
    """Single positive point prompts decoded on a cached embedding through ``SamPredictor.predict_torch`` (the
    generator's own call; one counted model call per batch). sam: a ``tasks.models.sam.SamAdapter``."""
    predictor = SamPredictor(sam.model)
    predictor.features = torch.as_tensor(np.asarray(embedding, np.float32), device=predictor.device)[None]
    predictor.original_size, predictor.input_size = tuple(hw), tuple(sam.input_size(hw))
    predictor.is_image_set = True     # what set_image would leave, without running the image encoder

    def decode(points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        coords = torch.as_tensor(predictor.transform.apply_coords(points, hw), device=predictor.device)
        labels = torch.ones(len(coords), dtype=torch.int, device=predictor.device)
        logits, iou_preds, _ = predictor.predict_torch(coords[:, None, :], labels[:, None],   # under no_grad
                                                       multimask_output=True, return_logits=True)
        count_call(sam.spec.name)
        return logits, iou_preds
    return decode


@declare_stage("sam_automatic_masks", 1, params=tuple(DEFAULT_PARAMS), models=("sam",), upstream=("embeddings",))
def sam_automatic_masks(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """SAM's automatic mask generator on each image's cached embedding (module docstring); params: the fields
    of :class:`MaskGeneratorRule` (``DEFAULT_PARAMS`` holds segment-anything's defaults)."""
    rule = MaskGeneratorRule(**call.params)
    sam = call.model("sam")
    out = []
    for w in batch:
        cached = call.read("embeddings", w.payload)
        hw = (int(cached.meta["height"]), int(cached.meta["width"]))
        arrays = automatic_masks(embedding_decoder(sam, cached.arrays["embedding"], hw), hw, rule,
                                 sam.model.mask_threshold)
        call.detail.update(point_prompts=rule.points_per_side ** 2, automatic_masks=len(arrays["masks"]))
        out.append(ItemData(arrays, {"height": hw[0], "width": hw[1], "prompts": rule.points_per_side ** 2}))
    return out
