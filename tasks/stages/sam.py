"""SAM foundation stages, shared by every method that segments with SAM (SAA, SAA+; SAM-LAD next).

  image_embedding   per image: embedding C x h x w float32 (SAM's set_image half)      meta: height, width
  refine_boxes      per image: masks N x H x W bool, scores N (one SAM mask per box; or the filled box for the
                    oracle refiner), produced as defect_masks or object_masks
  sam_box_masks     the per-(image, prompt) decode memo behind refine_boxes (``tasks.stages.sam_memo``)

The colour order fed to SAM is a parameter: the official SAA code feeds BGR, a clean method RGB, and the two get
different keys. Two methods on one store with the same SAM, colour order and images share every embedding.
"""
from __future__ import annotations

import numpy as np

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.saa import regions
from tasks.models.identity import model_identity
from tasks.stages.sam_memo import PromptMaskMemo, memo_stage


@declare_stage("image_embedding", 2, params=("color_order",), models=("sam",), reads_pixels=True)
def image_embedding(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """SAM's expensive ``set_image`` half, once per image; every prompt pass reuses it."""
    pixels = [call.pixels(w.payload, call.params["color_order"]) for w in batch]
    embeddings = call.model("sam").embed(pixels)
    return [ItemData({"embedding": e}, {"height": p.shape[0], "width": p.shape[1]})
            for e, p in zip(embeddings, pixels)]


def _memo_stage(call: StageCall):
    sam = model_identity(call.models["sam"], call.ctx.models_dir, call.ctx.random_weights).as_dict()
    return memo_stage(sam, call.refs["embeddings"])


def _memo(call: StageCall) -> PromptMaskMemo:
    """This process's memo of SAM decodes on the call's embeddings (kept across batches)."""
    if "memo" not in call.state:
        call.state["memo"] = PromptMaskMemo(call.ctx.store, _memo_stage(call), call.ctx.run_id)
    return call.state["memo"]


def _decoder(call: StageCall, image: str, hw: tuple[int, int]):
    """Decode prompts on ``image``'s cached embedding (rows with points one prompt at a time)."""
    def decode(boxes, points, labels, multimask):
        sam = call.model("sam")
        embedding = call.view("embeddings").read(image).arrays["embedding"]
        if points is None:
            masks, scores = sam.predict(embedding, hw, boxes=boxes, multimask=multimask)
            return masks, scores
        out = [sam.predict(embedding, hw, boxes=None if boxes is None else boxes[i:i + 1], points=points[i],
                           point_labels=labels[i], multimask=multimask) for i in range(len(points))]
        return np.concatenate([m for m, _ in out]), np.concatenate([s for _, s in out])
    return decode


def _refine_memo_refs(call: StageCall):
    if not call.has("embeddings"):
        return ()
    stage = _memo_stage(call)
    return (call.ctx.store.ref(stage.name, stage.key),)


@declare_stage("refine_boxes", 2, params=("refiner", "zero_mask_when_empty"), models=("sam?",),
               upstream=("boxes", "embeddings?"), side_artifacts=_refine_memo_refs)
def refine_boxes(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Refine each box into a mask (SAM, one mask per box; or the filled box for the oracle refiner).

    Called with ``produces_as`` defect_masks or object_masks. zero_mask_when_empty: no surviving box -> one
    all-zero mask with score 0, as the official code does for defects; otherwise zero masks. SAM decodes go
    through the per-(image, prompt) memo, so boxes decoded by any earlier pass are not decoded again.
    """
    sam_refiner = call.params["refiner"] == "sam"
    memo = _memo(call) if sam_refiner else None
    results = []
    for w in batch:
        b = call.read("boxes", w.payload)
        hw = (b.meta["height"], b.meta["width"])
        masks = (memo.box_masks(w.image, b.arrays["boxes"], hw, _decoder(call, w.image, hw)) if memo
                 else regions.box_masks(b.arrays["boxes"], hw))
        scores = b.arrays["scores"]
        if len(masks) == 0 and call.params["zero_mask_when_empty"]:
            masks, scores = np.zeros((1, *hw), bool), np.zeros(1, np.float32)
        results.append(ItemData({"masks": masks, "scores": scores.astype(np.float32)}))
    if memo:
        memo.flush()
        call.detail.update(boxes_decoded=memo.decoded, boxes_from_memo=memo.reused)
        memo.decoded = memo.reused = 0
    return results
