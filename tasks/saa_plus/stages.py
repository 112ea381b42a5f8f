"""SAA+ stages (SAA's embedding, detection and refinement stages are reused as they are).

Artifacts added by SAA+ (per image):
  object_boxes       boxes M x 4 xyxy px, scores M              meta: height, width, object_area[, fallbacks]
  saliency_map       map h x w float32 (WRN grid)              meta: mode (single | multi | single-fallback)[, fallbacks]
  saa_plus_map       map R x R float32

``fallbacks`` names the places where the official code would crash and anomflow goes on (``tasks.engine.fallbacks``);
the run report lists the images and counts them per stage.
"""
from __future__ import annotations

import numpy as np

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.saa import fusion, regions
from tasks.saa_plus import saliency as sal
from tasks.saa_plus.scoring import ScoringRule, score_map


@declare_stage("object_boxes", 4, params=("caption", "rule"), upstream=("detections",), fallbacks=True)
def object_boxes(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Boxes of the inspected object(s): score above threshold and area below 1/n of the image.

    params: caption (normalised object caption), rule = ``regions.BoxFilter`` fields with max_area = 1/n."""
    rule = regions.BoxFilter(**call.params["rule"])
    out = []
    for w in batch:
        d = call.read("detections", w.payload, key=call.params["caption"])
        hw = (d.meta["height"], d.meta["width"])
        boxes, scores, _ = regions.filter_queries(d.arrays["boxes"], d.arrays["logits"], d.arrays["token_ids"],
                                                  hw, rule)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(hw[0] * hw[1])
        object_area = float(areas.max()) if len(boxes) else 1.0   # no object found: the whole image
        out.append(ItemData({"boxes": boxes, "scores": scores},
                            {"height": hw[0], "width": hw[1], "object_area": object_area,
                             **({} if len(boxes) else {"fallbacks": ["no_object_box"]})}))
    return out


@declare_stage("saliency_map", 4, params=("multi", "k", "neighbours", "color_order", "single_size", "multi_size",
                                          "object_count"),
               models=("backbone",), upstream=("objects?",), reads_pixels=True, fallbacks=True)
def saliency_map(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """WideResNet-50-2 self-similarity per image: single-instance kNN, or across objects when n > 1.

    Each image's mode is picked first (multi needs >= 2 objects), then features are extracted at that mode's
    size. params: multi (n > 1 and objects given), object_count n (None unless multi), multi_size (None unless
    multi)."""
    p = call.params
    multi, count = p["multi"], p["object_count"] if p["multi"] else 1
    grids = [sal.resize_masks_nearest(call.read("objects", w.payload).arrays["masks"], p["multi_size"] // 4)
             if multi else None for w in batch]
    modes = [sal.saliency_mode(g, count) for g in grids]
    model = call.model("backbone")
    out: list[ItemData | None] = [None] * len(batch)
    size_of = {m: p["multi_size"] if m == "multi" else p["single_size"] for m in set(modes)}
    for mode_size in set(size_of.values()):
        idx = [i for i, m in enumerate(modes) if size_of[m] == mode_size]
        fed = [call.pixels(batch[i].payload, p["color_order"]) for i in idx]
        for i, feats in zip(idx, model.features(fed, mode_size)):
            smap, _ = sal.saliency_map(feats, grids[i] if modes[i] == "multi" else None,
                                       count if modes[i] == "multi" else 1, p["k"], p["neighbours"])
            fallbacks = sal.saliency_fallbacks(grids[i], count) if multi else []
            out[i] = ItemData({"map": smap.astype(np.float32)},
                              {"mode": modes[i], **({"fallbacks": fallbacks} if fallbacks else {})})
    return out


@declare_stage("saa_plus_map", 2, params=("rule", "resolution"), upstream=("masks", "saliency?", "objects?"))
def saa_plus_map(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Rescore by saliency, keep the top K, fuse, resize to the evaluation resolution.

    params: rule = ``ScoringRule`` fields."""
    rule = ScoringRule(**call.params["rule"])
    out = []
    for w in batch:
        m = call.read("masks", w.payload).arrays
        hw = m["masks"].shape[1:]
        smap = sal.upsample_saliency(call.read("saliency", w.payload).arrays["map"], hw) \
            if call.has("saliency") else None
        objects = call.read("objects", w.payload).arrays["masks"] if call.has("objects") else None
        fused = score_map(m["masks"], m["scores"], smap, objects, rule, sal.rescore)
        out.append(ItemData({"map": fusion.resize_map(fused, call.params["resolution"])}))
    return out
