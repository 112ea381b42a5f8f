"""SAA's own stages (the shared SAM and GroundingDINO stages live in ``tasks.stages``).

Artifacts (per image):
  defect_boxes          boxes N x 4 xyxy px, scores N, caption N       meta: height, width, phrases
  anomaly_map           map R x R float32 (R = eval_resolution)
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from stores import ArtifactRef, ItemData
from tasks.datasets.image_io import DECODE_RULE, read_image, read_mask
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import StageDef, StageResult, WorkItem, image_item, per_image, run_stage
from tasks.models.captions import normalize_caption
from tasks.models.loading import load_grounding_dino
from tasks.saa import fusion, regions
from tasks.stages.base import stage_task
from tasks.stages.grounding_dino import detection_item


@stage_task
def defect_boxes(ctx: RunContext, images: list[ImageItem], detections: ArtifactRef, detector: str,
                 captions: list[tuple[str, str]], rule: regions.BoxFilter, objects: ArtifactRef | None = None,
                 area_threshold: float | None = None) -> StageResult:
    """Filter each caption's queries by score, area and phrase, then pool the captions (cheap, no model).

    captions: (caption, background filter word) pairs; the word replaces ``rule.filter_word``.
    objects / area_threshold: SAA+'s property prompt on boxes: a box may not exceed θ × the object's area
    (``object_area`` of the object_boxes item); without them ``rule.max_area`` bounds every box.
    """
    caps = [(normalize_caption(c), word) for c, word in captions]
    params = {**rule.__dict__, "captions": caps, "area_threshold": area_threshold if objects else None}
    upstream = (detections, objects) if objects else (detections,)
    stage = StageDef("defect_boxes", 2, params, upstream=upstream)
    det_view = ctx.store.open(detections)
    obj_view = ctx.store.open(objects) if objects else None

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        phrase_fn = None
        if any(word for _, word in caps):
            phrase_fn = load_grounding_dino(detector, ctx.models_dir, ctx.random_weights, ctx.device).phrase
        results = []
        for w in batch:
            max_area = rule.max_area
            if obj_view and area_threshold:
                max_area = area_threshold * obj_view.read(image_item(objects, w.payload)).meta["object_area"]
            dets = [det_view.read(detection_item(w.image, c)) for c, _ in caps]
            hw = (dets[0].meta["height"], dets[0].meta["width"])
            per_caption = [regions.filter_queries(d.arrays["boxes"], d.arrays["logits"], d.arrays["token_ids"], hw,
                                                  replace(rule, filter_word=word, max_area=max_area), phrase_fn)
                           for d, (_, word) in zip(dets, caps)]
            boxes, scores, which, phrases = regions.pool_captions(per_caption)
            results.append(ItemData({"boxes": boxes, "scores": scores, "caption": which},
                                    {"height": hw[0], "width": hw[1], "phrases": phrases}))
        return results

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)


@stage_task
def oracle_defect_boxes(ctx: RunContext, images: list[ImageItem], objects: ArtifactRef | None = None,
                        area_threshold: float | None = None) -> StageResult:
    """Swappable region generator: one box per ground-truth component (tests check downstream logic).

    objects / area_threshold: the property prompt on boxes, as in :func:`defect_boxes`."""
    stage = StageDef("defect_boxes", 2, {"generator": "oracle", "decode": DECODE_RULE,
                                         "area_threshold": area_threshold if objects else None},
                     upstream=(objects,) if objects else (), side_inputs=("mask",))
    obj_view = ctx.store.open(objects) if objects else None

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        results = []
        for w in batch:
            rec = w.payload.record
            hw = read_image(rec.path, ctx.dataset_root, expect_sha256=w.payload.image_id).shape[:2]
            mask_sha = w.payload.side_hash("mask")
            mask = read_mask(rec.mask_path, hw, expect_sha256=mask_sha if mask_sha != ABSENT else None) \
                if rec.mask_path else np.zeros(hw, bool)
            boxes, scores = regions.oracle_boxes(mask)
            if obj_view and area_threshold:
                object_area = obj_view.meta(image_item(objects, w.payload))["object_area"]
                keep = regions.smaller_than(boxes, hw, area_threshold * object_area)
                boxes, scores = boxes[keep], scores[keep]
            results.append(ItemData({"boxes": boxes, "scores": scores, "caption": np.zeros(len(boxes), np.int32)},
                                    {"height": hw[0], "width": hw[1], "phrases": ["ground truth"] * len(boxes)}))
        return results

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)


@stage_task
def anomaly_map(ctx: RunContext, images: list[ImageItem], masks: ArtifactRef, fusion_mode: str,
                k: int | None, resolution: int) -> StageResult:
    """Fuse the (top-k) scored masks into one map and resize it to the evaluation resolution."""
    stage = StageDef("anomaly_map", 1, {"fusion": fusion_mode, "top_k": k, "resolution": resolution},
                     upstream=(masks,))
    view = ctx.store.open(masks)

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        results = []
        for w in batch:
            m = view.read(image_item(masks, w.payload))
            keep = fusion.top_k(m.arrays["scores"], k)
            fused = fusion.fuse_masks(m.arrays["masks"][keep], m.arrays["scores"][keep], fusion_mode)
            results.append(ItemData({"map": fusion.resize_map(fused, resolution)}))
        return results

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)
