"""Oracle object stages: object boxes and masks from the synthetic generator's object labels.

They honour the ``object_boxes`` / ``object_masks`` contracts of the GroundingDINO + SAM object pass, so
SAA+'s property, saliency and scoring logic can be checked exactly against ground truth (tests, debugging).
Labels live beside the synthetic images (``tasks.datasets.synth.object_labels_path``); real datasets have none.
"""
from __future__ import annotations

import os

import numpy as np

from stores import ItemData
from tasks.datasets.image_io import read_label_map
from tasks.datasets.records import ImageError
from tasks.datasets.generated import object_labels_path
from tasks.engine.context import ImageItem
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage


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


def _labels(call: StageCall, item: ImageItem) -> np.ndarray:
    rec = item.record
    root = call.ctx.dataset_root
    hw = call.pixels(item).shape[:2]
    labels_sha = item.side_hash("labels")
    labels_path = os.path.join(root or os.path.dirname(rec.path), object_labels_path(rec.relpath))
    try:
        return read_label_map(labels_path, hw, root=root, expect_sha256=labels_sha if labels_sha != ABSENT else None)
    except ImageError as exc:   # report it against the image, naming the label file
        raise ImageError(rec.path, f"object labels {labels_path}: {exc.reason}") from None


@declare_stage("object_boxes", 4, params=("generator",), side_inputs=("labels",), reads_pixels=True,
               fallbacks=True)
def oracle_object_boxes(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """object_boxes from labels: one tight box per object, score 1; object_area = largest box / image area."""
    out = []
    for w in batch:
        labels = _labels(call, w.payload)
        boxes = boxes_of_masks(object_masks_from_labels(labels))
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(labels.size)
        out.append(ItemData({"boxes": boxes, "scores": np.ones(len(boxes), np.float32)},
                            {"height": labels.shape[0], "width": labels.shape[1],
                             "object_area": float(areas.max()) if len(boxes) else 1.0,
                             **({} if len(boxes) else {"fallbacks": ["no_object_box"]})}))
    return out


@declare_stage("object_masks", 3, params=("generator",), side_inputs=("labels",), reads_pixels=True)
def oracle_object_masks(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """object_masks from labels: masks M x H x W bool (one per object), scores M = 1."""
    out = []
    for w in batch:
        masks = object_masks_from_labels(_labels(call, w.payload))
        out.append(ItemData({"masks": masks, "scores": np.ones(len(masks), np.float32)}))
    return out
