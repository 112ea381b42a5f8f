"""SAA's own stages (the shared SAM and GroundingDINO stages live in ``tasks.stages``).

Artifacts (per image):
  defect_boxes          boxes N x 4 xyxy px, scores N, caption N       meta: height, width, phrases
  anomaly_map           map R x R float32 (R = eval_resolution)
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from stores import ItemData
from tasks.engine.inputs import ABSENT
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.datasets.image_io import read_mask
from tasks.saa import fusion, regions


@declare_stage("defect_boxes", 3, params=("rule", "captions", "area_threshold"), models=("detector",),
               upstream=("detections", "objects?"))
def defect_boxes(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Filter each caption's queries by score, area and phrase, then pool the captions (cheap, no model).

    params: rule = ``regions.BoxFilter`` fields; captions = [normalised caption, background filter word] pairs
    (the word replaces ``rule.filter_word``); area_threshold: SAA+'s property prompt on boxes, with upstream
    ``objects``: a box may not exceed θ × the object's area (``object_area``), else ``rule.max_area`` bounds it.
    """
    rule = regions.BoxFilter(**call.params["rule"])
    captions, area_threshold = call.params["captions"], call.params["area_threshold"]
    phrase_fn = call.model("detector").phrase if any(word for _, word in captions) else None
    results = []
    for w in batch:
        max_area = rule.max_area
        if call.has("objects") and area_threshold:
            max_area = area_threshold * call.meta("objects", w.payload)["object_area"]
        dets = [call.read("detections", w.payload, key=c) for c, _ in captions]
        hw = (dets[0].meta["height"], dets[0].meta["width"])
        per_caption = [regions.filter_queries(d.arrays["boxes"], d.arrays["logits"], d.arrays["token_ids"], hw,
                                              replace(rule, filter_word=word, max_area=max_area), phrase_fn)
                       for d, (_, word) in zip(dets, captions)]
        boxes, scores, which, phrases = regions.pool_captions(per_caption)
        results.append(ItemData({"boxes": boxes, "scores": scores, "caption": which},
                                {"height": hw[0], "width": hw[1], "phrases": phrases}))
    return results


@declare_stage("defect_boxes", 3, params=("generator", "area_threshold"), upstream=("objects?",),
               side_inputs=("mask",), reads_pixels=True)
def oracle_defect_boxes(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Swappable region generator: one box per ground-truth component (tests check downstream logic).

    params: generator = "oracle"; area_threshold: the property prompt on boxes, as in :func:`defect_boxes`."""
    area_threshold = call.params["area_threshold"]
    results = []
    for w in batch:
        rec = w.payload.record
        hw = call.pixels(w.payload).shape[:2]
        mask_sha = w.payload.side_hash("mask")
        mask = read_mask(rec.mask_path, hw, expect_sha256=mask_sha if mask_sha != ABSENT else None) \
            if rec.mask_path else np.zeros(hw, bool)
        boxes, scores = regions.oracle_boxes(mask)
        if call.has("objects") and area_threshold:
            keep = regions.smaller_than(boxes, hw, area_threshold * call.meta("objects", w.payload)["object_area"])
            boxes, scores = boxes[keep], scores[keep]
        results.append(ItemData({"boxes": boxes, "scores": scores, "caption": np.zeros(len(boxes), np.int32)},
                                {"height": hw[0], "width": hw[1], "phrases": ["ground truth"] * len(boxes)}))
    return results


@declare_stage("anomaly_map", 2, params=("fusion", "top_k", "resolution"), upstream=("masks",))
def anomaly_map(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Fuse the (top-k) scored masks into one map and resize it to the evaluation resolution."""
    p = call.params
    results = []
    for w in batch:
        m = call.read("masks", w.payload)
        keep = fusion.top_k(m.arrays["scores"], p["top_k"])
        fused = fusion.fuse_masks(m.arrays["masks"][keep], m.arrays["scores"][keep], p["fusion"])
        results.append(ItemData({"map": fusion.resize_map(fused, p["resolution"])}))
    return results
