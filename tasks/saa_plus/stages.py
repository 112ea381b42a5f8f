"""SAA+ stages as Prefect tasks (SAA's embedding, detection and refinement stages are reused as they are).

Artifacts added by SAA+ (per image):
  object_boxes       boxes M x 4 xyxy px, scores M              meta: height, width, object_area[, fallbacks]
  saliency_map       map h x w float32 (WRN grid)              meta: mode (single | multi | single-fallback)[, fallbacks]

``fallbacks`` names the places where the official code would crash and anomflow goes on (``tasks.engine.fallbacks``);
the run report lists the images and counts them per stage.
  saa_plus_map       map R x R float32
"""
from __future__ import annotations

import numpy as np

from stores import ArtifactRef, ItemData
from tasks.datasets.image_io import DECODE_RULE, read_image
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.fallbacks import with_fallbacks
from tasks.engine.runner import StageDef, StageResult, WorkItem, image_item, per_image, run_stage
from tasks.models.captions import normalize_caption
from tasks.models.loading import load_wrn50
from tasks.saa import fusion, regions
from tasks.stages.base import model_identity_dict, stage_task
from tasks.stages.grounding_dino import detection_item
from tasks.saa_plus import saliency as sal
from tasks.saa_plus.scoring import ScoringRule, score_map


@stage_task
def object_boxes(ctx: RunContext, images: list[ImageItem], detections: ArtifactRef, object_caption: str,
                 object_count: int, box_threshold: float, text_threshold: float) -> StageResult:
    """Boxes of the inspected object(s): score above threshold and area below 1/n of the image."""
    rule = regions.BoxFilter(box_threshold, text_threshold, max_area=1.0 / object_count)
    caption = normalize_caption(object_caption)
    stage = StageDef("object_boxes", 2, {"caption": caption, **rule.__dict__}, upstream=(detections,))
    view = ctx.store.open(detections)

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        out = []
        for w in batch:
            d = view.read(detection_item(w.image, caption))
            hw = (d.meta["height"], d.meta["width"])
            boxes, scores, _ = regions.filter_queries(d.arrays["boxes"], d.arrays["logits"], d.arrays["token_ids"],
                                                      hw, rule)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(hw[0] * hw[1])
            object_area = float(areas.max()) if len(boxes) else 1.0   # no object found: the whole image
            out.append(ItemData({"boxes": boxes, "scores": scores},
                                {"height": hw[0], "width": hw[1], "object_area": object_area,
                                 **({} if len(boxes) else {"fallbacks": ["no_object_box"]})}))
        return out

    work = per_image(images, stage)
    return with_fallbacks(ctx.store, run_stage(ctx.store, stage, work, compute, ctx.batch_size, ctx.progress,
                                               ctx.run_id), work)


@stage_task
def saliency_map(ctx: RunContext, images: list[ImageItem], backbone: str, objects: ArtifactRef | None,
                 object_count: int, k: int, neighbours: str, color_order: str, single_size: int,
                 multi_size: int) -> StageResult:
    """WideResNet-50-2 self-similarity per image: single-instance kNN, or across objects when n > 1."""
    multi = object_count > 1 and objects is not None
    params = {"multi": multi, "k": k, "neighbours": neighbours, "color_order": color_order,
              "single_size": single_size, "multi_size": multi_size if multi else None}
    stage = StageDef("saliency_map", 3, {**params, "decode": DECODE_RULE}, (model_identity_dict(ctx, backbone),),
                     (objects,) if multi else ())
    obj_view = ctx.store.open(objects) if multi else None

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        """Pick each image's mode first (multi needs >= 2 objects), then extract features at that mode's size."""
        grids = [sal.resize_masks_nearest(obj_view.read(image_item(objects, w.payload)).arrays["masks"],
                                          multi_size // 4) if multi else None for w in batch]
        modes = [sal.saliency_mode(g, object_count if multi else 1) for g in grids]
        model = load_wrn50(backbone, ctx.models_dir, ctx.random_weights, ctx.device)
        out: list[ItemData | None] = [None] * len(batch)
        for mode_size in {multi_size if m == "multi" else single_size for m in modes}:
            idx = [i for i, m in enumerate(modes) if (multi_size if m == "multi" else single_size) == mode_size]
            pixels = [read_image(batch[i].payload.record.path, ctx.dataset_root,
                                 expect_sha256=batch[i].payload.image_id) for i in idx]
            fed = [p[..., ::-1].copy() if color_order == "bgr" else p for p in pixels]
            for i, feats in zip(idx, model.features(fed, mode_size)):
                smap, _ = sal.saliency_map(feats, grids[i] if modes[i] == "multi" else None,
                                           object_count if modes[i] == "multi" else 1, k, neighbours)
                fallbacks = sal.saliency_fallbacks(grids[i], object_count) if multi else []
                out[i] = ItemData({"map": smap.astype(np.float32)},
                                  {"mode": modes[i], **({"fallbacks": fallbacks} if fallbacks else {})})
        return out

    work = per_image(images, stage)
    return with_fallbacks(ctx.store, run_stage(ctx.store, stage, work, compute, ctx.batch_size, ctx.progress,
                                               ctx.run_id), work)


@stage_task
def saa_plus_map(ctx: RunContext, images: list[ImageItem], masks: ArtifactRef, saliency: ArtifactRef | None,
                 objects: ArtifactRef | None, rule: ScoringRule, resolution: int) -> StageResult:
    """Rescore by saliency, keep the top K, fuse, resize to the evaluation resolution."""
    upstream = tuple(r for r in (masks, saliency, objects) if r is not None)
    params = {**rule.__dict__, "resolution": resolution, "saliency": saliency is not None}
    stage = StageDef("saa_plus_map", 1, params, upstream=upstream)
    views = {name: ctx.store.open(ref) if ref else None
             for name, ref in (("masks", masks), ("saliency", saliency), ("objects", objects))}

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        out = []
        for w in batch:
            m = views["masks"].read(image_item(masks, w.payload)).arrays
            hw = m["masks"].shape[1:]
            smap = sal.upsample_saliency(views["saliency"].read(image_item(saliency, w.payload)).arrays["map"], hw) \
                if views["saliency"] else None
            objs = views["objects"].read(image_item(objects, w.payload)).arrays["masks"] if views["objects"] else None
            fused = score_map(m["masks"], m["scores"], smap, objs, rule, sal.rescore)
            out.append(ItemData({"map": fusion.resize_map(fused, resolution)}))
        return out

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)
