"""GroundingDINO foundation stage: raw detections per (image, caption), shared by SAA and SAA+.

  grounding_detections  per (image, caption): boxes Q x 4 cxcywh, logits Q x T, token_ids T
                        meta: height, width, caption

Items are keyed by (image, normalised caption), so adding a caption runs the detector for it alone, and two
methods that send the same caption share its detections.
"""
from __future__ import annotations

from collections import defaultdict

from stores import ItemData, item_key
from tasks.datasets.image_io import DECODE_RULE, read_image
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.runner import StageDef, StageResult, WorkItem, run_stage
from tasks.models.captions import normalize_caption
from tasks.models.loading import load_grounding_dino
from tasks.stages.base import model_identity_dict, stage_task


def detection_item(image_id: str, caption: str) -> str:
    return item_key(image_id, normalize_caption(caption))


@stage_task
def grounding_detections(ctx: RunContext, images: list[ImageItem], detector: str, captions: list[str]) -> StageResult:
    """Raw GroundingDINO queries per (image, caption): adding a caption runs the detector for it alone."""
    # v2: the official resize rule (short side rounded first) and unpadded one-size batches
    stage = StageDef("grounding_detections", 2, {"decode": DECODE_RULE}, (model_identity_dict(ctx, detector),))
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
