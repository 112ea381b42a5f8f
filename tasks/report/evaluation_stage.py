"""Evaluation as a cached stage: one set item per category, exact metrics in memory independent of its size.

  category_evaluation   per set (a category's scored images; their content hashes and ground-truth hashes are
                        in the item id): scores N float32 (image scores, members in id order), labels N int8
                        (-1 = unlabelled)
                        meta: members [image id], metrics {name: value | None}, norm [lo, hi] (the category
                        min-max, applied again for previews and saved maps), constant_maps, failures
                        {image id: reason} (ground truth that could not be read; those images are left out),
                        curves {"pixel": {"fpr", "tpr", "precision"[, "pro"]} K floats each (a few hundred exact
                        points of the pixel ROC / PR / PRO curves, ``tasks.metrics_stream.CurveSampler``) | None}

Pixel metrics stream (``tasks.metrics_stream``): maps are read one at a time, twice (min-max, then the metrics),
and merged from per-image sorted runs, so peak memory does not grow with the number of images. A warm rerun
reads the item alone, not the maps. ``resolution`` is the maps' size: an int R (maps R x R, ground truth resized
to R x R by nearest neighbour, as before) or ``native`` (maps and ground truth at each image's own H x W).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from stores import ItemData
from tasks import metrics
from tasks.datasets.image_io import image_size, read_mask
from tasks.datasets.records import ImageError, ImageRecord
from tasks.engine.context import ImageItem
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.metrics_stream import stream_pixel_metrics_and_curves
from tasks.saa import fusion

# Pixels held by a merge step (≈ 100 bytes each). The results do not depend on it (exact at any budget), so it is
# not in the key; 2^18 keeps a category's evaluation near 30 MB however many images it has.
MERGE_BUDGET = 1 << 18
MAP_CACHE_BYTES = 16 << 20   # decoded map packs kept while streaming (a view keeps up to 256 MB by default)


def ground_truth(image: ImageItem, resolution: int | str) -> np.ndarray | None:
    """R x R (or H x W at ``native``) bool ground truth, None when the dataset has no labels."""
    rec: ImageRecord = image.record
    if rec.label is None:
        return None
    hw = image_size(rec.path)
    size = hw if resolution == "native" else (resolution, resolution)
    if rec.label == 1 and not rec.mask_path:   # image labels only (DigitAnatomy): no pixel metrics
        return None
    if rec.label == 0 or not rec.mask_path:
        return np.zeros(size, bool)
    mask_sha = image.side_hash("mask")
    mask = read_mask(rec.mask_path, hw, expect_sha256=mask_sha if mask_sha not in (None, ABSENT) else None)
    return mask if resolution == "native" else metrics.resize_mask(mask, resolution)


def map_item(call: StageCall, image: ImageItem) -> str:
    """Where the maps artifact holds ``image``'s map: its item by image, or ``map_items`` (SAM-LAD keys maps by
    query and references)."""
    return call.params["map_items"].get(image.image_id) or call.item_of("maps", image)


def normalised(raw: np.ndarray, norm: tuple[float, float] | None) -> np.ndarray:
    """One map scaled by its category's (lo, hi) (``fusion.scale_to_unit``), or as it is without normalisation."""
    return raw if norm is None else fusion.scale_to_unit(raw, *norm)


def _evaluate(call: StageCall, group: ItemSet) -> ItemData:
    p = call.params
    members = sorted(group.members, key=lambda m: m.image_id)
    failures: dict[str, str] = {}
    truths: dict[str, bool] = {}
    for m in members:                                   # ground truth readable? (read again when streaming)
        try:
            truths[m.image_id] = ground_truth(m, p["resolution"]) is not None
        except ImageError as exc:
            failures[m.image_id] = f"ground truth {exc.path}: {exc.reason}"
    kept = [m for m in members if m.image_id not in failures]
    maps = call.ctx.store.open(call.refs["maps"], cache_bytes=MAP_CACHE_BYTES)
    read_map = (lambda m: maps.read(map_item(call, m)).arrays["map"])
    lo = hi = None
    for m in kept:                                      # pass 1: the category's min and max
        raw = read_map(m)
        lo = float(raw.min()) if lo is None else min(lo, float(raw.min()))
        hi = float(raw.max()) if hi is None else max(hi, float(raw.max()))
    norm = (lo, hi) if p["normalise"] == "category_minmax" and kept else None
    scores = np.zeros(len(kept), np.float32)

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:   # pass 2: one normalised map at a time
        for n, m in enumerate(kept):
            amap = normalised(read_map(m), norm)
            scores[n] = amap.max() if amap.size else 0.0
            yield amap, ground_truth(m, p["resolution"])

    labelled = bool(kept) and all(truths[m.image_id] for m in kept)
    pixel_curves = None
    if labelled:
        result, pixel_curves = stream_pixel_metrics_and_curves(pairs(), pro=p["pro"], budget=MERGE_BUDGET)
        values: dict | None = {k: result[k] for k in metrics.PIXEL_KEYS}
    else:
        for _ in pairs():
            pass
        values = None
    if call.has("scores"):                              # an image-score artifact replaces the map maximum
        scores = np.array([call.read("scores", m).arrays["score"] for m in kept], np.float32).reshape(-1)
    labels = np.array([-1 if m.record.label is None else m.record.label for m in kept], np.int8)
    if values is None and kept and (labels >= 0).all():   # labelled images without pixel ground truth
        values = {}
    if values is not None:
        values.update(metrics.image_metrics(scores, labels))
    return ItemData({"scores": scores, "labels": labels},
                    {"members": [m.image_id for m in kept], "metrics": values,
                     "norm": list(norm) if norm else None,
                     "constant_maps": bool(norm is not None and hi <= lo), "failures": failures,
                     "curves": {"pixel": pixel_curves}})


@declare_stage("category_evaluation", 5, params=("normalise", "resolution", "pro", "map_items"),
               upstream=("maps", "scores?"),
               produces="set", side_inputs=("mask",))
def category_evaluation(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each item: one category's image scores and exact metrics (module docstring)."""
    return [_evaluate(call, w.payload) for w in batch]
