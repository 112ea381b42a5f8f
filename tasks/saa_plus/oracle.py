"""Oracle object stages: object boxes and masks from the synthetic generator's object labels.

They honour the ``object_boxes`` / ``object_masks`` contracts of the GroundingDINO + SAM object pass, so
SAA+'s property, saliency and scoring logic can be checked exactly against ground truth (tests, debugging).
Labels live beside the synthetic images (``tasks.datasets.synth.object_labels_path``); real datasets have none.
"""
from __future__ import annotations

import os

import numpy as np

from stores import ItemData
from tasks.datasets.image_io import DECODE_RULE, read_image, read_label_map
from tasks.datasets.records import ImageError
from tasks.datasets.synth import object_labels_path
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.fallbacks import with_fallbacks
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import StageDef, StageResult, WorkItem, per_image, run_stage
from tasks.stages.base import stage_task


def object_masks_from_labels(labels: np.ndarray) -> np.ndarray:
    """labels H x W uint8 (0 = background) -> M x H x W bool, one mask per label value present, ascending."""
    values = [v for v in np.unique(labels) if v != 0]
    return np.stack([labels == v for v in values]) if values else np.zeros((0, *labels.shape), bool)


def boxes_of_masks(masks: np.ndarray) -> np.ndarray:
    """masks M x H x W bool -> M x 4 xyxy px (exclusive max corner), the tight box of each non-empty mask."""
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def _labels(ctx: RunContext, item: ImageItem) -> np.ndarray:
    rec = item.record
    hw = read_image(rec.path, ctx.dataset_root, expect_sha256=item.image_id).shape[:2]
    labels_sha = item.side_hash("labels")
    labels_path = os.path.join(ctx.dataset_root or os.path.dirname(rec.path), object_labels_path(rec.relpath))
    try:
        return read_label_map(labels_path, hw, root=ctx.dataset_root,
                              expect_sha256=labels_sha if labels_sha != ABSENT else None)
    except ImageError as exc:   # report it against the image, naming the label file
        raise ImageError(rec.path, f"object labels {labels_path}: {exc.reason}") from None


@stage_task
def oracle_object_boxes(ctx: RunContext, images: list[ImageItem]) -> StageResult:
    """object_boxes from labels: one tight box per object, score 1; object_area = largest box / image area."""
    stage = StageDef("object_boxes", 3, {"generator": "oracle", "decode": DECODE_RULE}, side_inputs=("labels",))

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        out = []
        for w in batch:
            labels = _labels(ctx, w.payload)
            boxes = boxes_of_masks(object_masks_from_labels(labels))
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(labels.size)
            out.append(ItemData({"boxes": boxes, "scores": np.ones(len(boxes), np.float32)},
                                {"height": labels.shape[0], "width": labels.shape[1],
                                 "object_area": float(areas.max()) if len(boxes) else 1.0,
                                 **({} if len(boxes) else {"fallbacks": ["no_object_box"]})}))
        return out

    work = per_image(images, stage)
    return with_fallbacks(ctx.store, run_stage(ctx.store, stage, work, compute, ctx.batch_size, ctx.progress,
                                               ctx.run_id), work)


@stage_task
def oracle_object_masks(ctx: RunContext, images: list[ImageItem]) -> StageResult:
    """object_masks from labels: masks M x H x W bool (one per object), scores M = 1."""
    stage = StageDef("object_masks", 2, {"generator": "oracle", "decode": DECODE_RULE}, side_inputs=("labels",))

    def compute(batch: list[WorkItem]) -> list[ItemData]:
        out = []
        for w in batch:
            masks = object_masks_from_labels(_labels(ctx, w.payload))
            out.append(ItemData({"masks": masks, "scores": np.ones(len(masks), np.float32)}))
        return out

    return run_stage(ctx.store, stage, per_image(images, stage), compute, ctx.batch_size, ctx.progress, ctx.run_id)
