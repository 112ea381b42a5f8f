"""SAA stages as Prefect tasks: each reads its inputs from the store, computes what is missing, commits.

Artifacts (all per image unless noted):
  image_embedding       embedding C x h x w float32                      meta: height, width
  grounding_detections  per (image, caption): boxes Q x 4 cxcywh, logits Q x T, token_ids T
  defect_boxes          boxes N x 4 xyxy px, scores N, caption N       meta: height, width, phrases
  defect_masks          masks N x H x W bool, scores N   (refine_boxes; also object_masks for SAA+)
  sam_box_masks         per (image, decode call): boxes K x 4, masks K x H x W  (memo behind refine_boxes)
  anomaly_map           map R x R float32 (R = eval_resolution)
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from stores import ArtifactRef, ItemData, item_key
from tasks.datasets.image_io import DECODE_RULE, read_image, read_mask
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import StageDef, StageResult, WorkItem, image_item, per_image, run_stage
from tasks.models.captions import normalize_caption
from tasks.models.loading import load_grounding_dino, load_sam, model_identity
from tasks.saa import fusion, regions
from tasks.saa.mask_memo import BoxMaskMemo, memo_stage

stage_task = task(cache_policy=NO_CACHE, persist_result=False)


def _identity(ctx: RunContext, name: str) -> dict:
    return model_identity(name, ctx.models_dir, ctx.random_weights).as_dict()


@stage_task
def image_embedding(ctx: RunContext, images: list[ImageItem], sam_name: str, color_order: str) -> StageResult:
    """SAM's expensive ``set_image`` half, once per image; every prompt pass reuses it."""
    stage = StageDef("image_embedding", 1, {"color_order": color_order, "decode": DECODE_RULE},
                     (_identity(ctx, sam_name),))

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        pixels = [read_image(w.payload.record.path, ctx.dataset_root, expect_sha256=w.payload.image_id) for w in batch]
        fed = [p[..., ::-1].copy() if color_order == "bgr" else p for p in pixels]
        sam = load_sam(sam_name, ctx.models_dir, ctx.random_weights, ctx.device)
        embeddings = sam.embed(fed)
        return [ItemData({"embedding": e}, {"height": p.shape[0], "width": p.shape[1]})
                for e, p in zip(embeddings, pixels)]

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)


def detection_item(image_id: str, caption: str) -> str:
    return item_key(image_id, normalize_caption(caption))


@stage_task
def grounding_detections(ctx: RunContext, images: list[ImageItem], detector: str, captions: list[str]) -> StageResult:
    """Raw GroundingDINO queries per (image, caption): adding a caption runs the detector for it alone."""
    # v2: the official resize rule (short side rounded first) and unpadded one-size batches
    stage = StageDef("grounding_detections", 2, {"decode": DECODE_RULE}, (_identity(ctx, detector),))
    # caption-major: a batch holds several images of one caption, which detect() runs as one forward per size
    work = [WorkItem(detection_item(i.image_id, c), i.image_id, (i, normalize_caption(c)))
            for c in captions for i in images]

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        model = load_grounding_dino(detector, ctx.models_dir, ctx.random_weights, ctx.device)
        by_caption: dict[str, list[int]] = defaultdict(list)
        for n, w in enumerate(batch):
            by_caption[w.payload[1]].append(n)
        out: list[ItemData | None] = [None] * len(batch)
        for caption, idx in by_caption.items():
            pixels = [read_image(batch[n].payload[0].record.path, ctx.dataset_root,
                                 expect_sha256=batch[n].payload[0].image_id) for n in idx]
            for n, p, det in zip(idx, pixels, model.detect(pixels, caption)):
                out[n] = ItemData({"boxes": det.boxes_cxcywh, "logits": det.token_logits, "token_ids": det.token_ids},
                                  {"height": p.shape[0], "width": p.shape[1], "caption": caption})
        return out

    return run_stage(ctx.store, stage, work, compute, ctx.batch_size, ctx.progress, ctx.run_id)


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
                keep = regions.smaller_than(boxes, hw, area_threshold * obj_view.read(image_item(objects, w.payload)).meta["object_area"])
                boxes, scores = boxes[keep], scores[keep]
            results.append(ItemData({"boxes": boxes, "scores": scores, "caption": np.zeros(len(boxes), np.int32)},
                                    {"height": hw[0], "width": hw[1], "phrases": ["ground truth"] * len(boxes)}))
        return results

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)


@stage_task
def refine_boxes(ctx: RunContext, images: list[ImageItem], boxes: ArtifactRef, embeddings: ArtifactRef | None,
                 refiner: str, sam_name: str, produces: str = "defect_masks",
                 zero_mask_when_empty: bool = True) -> StageResult:
    """Refine each box into a mask (SAM, one mask per box; or the filled box for the oracle refiner).

    produces: the artifact name (defect_masks, object_masks). zero_mask_when_empty: no surviving box ->
    one all-zero mask with score 0, as the official code does for defects; otherwise zero masks.
    SAM decodes go through the per-(image, box) memo, so boxes decoded by any earlier pass are not decoded again.
    """
    sam_id = _identity(ctx, sam_name) if refiner == "sam" else None
    upstream = (boxes, embeddings) if refiner == "sam" else (boxes,)
    params = {"refiner": refiner, "multimask": False, "zero_mask_when_empty": zero_mask_when_empty}
    stage = StageDef(produces, 1, params, (sam_id,) if sam_id else (), upstream)
    box_view = ctx.store.open(boxes)
    emb_view = ctx.store.open(embeddings) if refiner == "sam" else None
    memo = BoxMaskMemo(ctx.store, memo_stage(sam_id, embeddings), ctx.run_id) if refiner == "sam" else None

    def decoder(image_id: str, hw: tuple[int, int]):
        def decode(new_boxes: np.ndarray) -> np.ndarray:
            sam = load_sam(sam_name, ctx.models_dir, ctx.random_weights, ctx.device)
            masks, _ = sam.predict(emb_view.read(image_id).arrays["embedding"], hw, boxes=new_boxes, multimask=False)
            return masks[:, 0]
        return decode

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        results = []
        for w in batch:
            b = box_view.read(image_item(boxes, w.payload))
            hw = (b.meta["height"], b.meta["width"])
            masks = (memo.masks_for(w.image, b.arrays["boxes"], hw, decoder(w.image, hw)) if memo
                     else regions.box_masks(b.arrays["boxes"], hw))
            scores = b.arrays["scores"]
            if len(masks) == 0 and zero_mask_when_empty:
                masks, scores = np.zeros((1, *hw), bool), np.zeros(1, np.float32)
            results.append(ItemData({"masks": masks, "scores": scores.astype(np.float32)}))
        if memo:
            memo.flush()
        return results

    result = run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)
    if memo:
        result.stats.detail.update(boxes_decoded=memo.decoded, boxes_from_memo=memo.reused)
        result.side_refs = (memo.ref,)
    return result


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
