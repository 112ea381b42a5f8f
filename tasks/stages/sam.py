"""SAM foundation stages, shared by every method that segments with SAM (SAA, SAA+; SAM-LAD next).

  image_embedding   per image: embedding C x h x w float32 (SAM's set_image half)      meta: height, width
  refine_boxes      per image: masks N x H x W bool, scores N (one SAM mask per box; or the filled box for the
                    oracle refiner), produced as defect_masks or object_masks
  sam_box_masks     the per-(image, box) decode memo behind refine_boxes (``tasks.stages.sam_memo``)

The colour order fed to SAM is a parameter: the official SAA code feeds BGR, a clean method RGB, and the two get
different keys. Two methods on one store with the same SAM, colour order and images share every embedding.
"""
from __future__ import annotations

import numpy as np

from stores import ArtifactRef, ItemData
from tasks.datasets.image_io import DECODE_RULE, read_image
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.runner import StageDef, StageResult, WorkItem, image_item, per_image, run_stage
from tasks.models.loading import load_sam
from tasks.saa import regions
from tasks.stages.base import model_identity_dict, stage_task
from tasks.stages.sam_memo import BoxMaskMemo, memo_stage


@stage_task
def image_embedding(ctx: RunContext, images: list[ImageItem], sam_name: str, color_order: str) -> StageResult:
    """SAM's expensive ``set_image`` half, once per image; every prompt pass reuses it."""
    stage = StageDef("image_embedding", 1, {"color_order": color_order, "decode": DECODE_RULE},
                     (model_identity_dict(ctx, sam_name),))

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        pixels = [read_image(w.payload.record.path, ctx.dataset_root, expect_sha256=w.payload.image_id) for w in batch]
        fed = [p[..., ::-1].copy() if color_order == "bgr" else p for p in pixels]
        sam = load_sam(sam_name, ctx.models_dir, ctx.random_weights, ctx.device)
        embeddings = sam.embed(fed)
        return [ItemData({"embedding": e}, {"height": p.shape[0], "width": p.shape[1]})
                for e, p in zip(embeddings, pixels)]

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
    sam_id = model_identity_dict(ctx, sam_name) if refiner == "sam" else None
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
