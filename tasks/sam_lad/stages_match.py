"""SAM-LAD's per-query stages: object matching (OMM), anomaly measurement (AMM), and the final map.

A query and its k references form one set item (``match_set``): its id hashes the query's and the references'
content, so a query is matched and scored again only when its references change.

  object_matching  per set: for each reference i, plan_i (M+1) x (N_i+1) float32 (Sinkhorn probabilities with
                   the dustbin row/column last), match_r_i N_i int64 (query object or -1), dustbin_r_i N_i float32;
                   match_q k x M int64 (reference object or -1), nearest_q k x M int64, unmatched M bool (the
                   rule across references)            meta: references [image id], objects M, reference_objects [N_i]
  object_scores    per set: map g x g float32 (Eq. 13-16 plus missing objects when on), object_scores M float32
                   (max of each object's map), missing_map g x g float32     meta: unmatched, missing
  sam_lad_map      per set: map H x W float32 at the query's size (or R x R), bilinear then Gaussian σ
                   meta: score (max). Evaluation finds each query's map through ``map_items`` (query -> set item)
"""
from __future__ import annotations

import numpy as np

from stores import ItemData
from tasks.engine.context import ImageItem
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.sam_lad import amm, assemble, omm


def match_set(query: ImageItem, references: list[ImageItem]) -> ItemSet:
    """One query with its references (nearest first); the query fails with the set."""
    return ItemSet(f"match:{query.image_id}", (query, *references), (query,),
                   {"query": query, "references": tuple(references)})


def _descriptors(call: StageCall, image: ImageItem) -> dict[str, np.ndarray]:
    return call.read("descriptors", image, names=["descriptors", "objects"]).arrays


@declare_stage("object_matching", 1, params=("dustbin_z", "temperature", "iterations", "threshold", "rule"),
               upstream=("descriptors",), produces="set")
def object_matching(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Dustbin-augmented cosine scores -> log-domain Sinkhorn -> mutual argmax above the threshold, per reference.
    Scores and z are divided by ``temperature`` first (SuperGlue's scores are dot products / 16, not cosines: at
    temperature 1 a true pair among 6 objects gets 0.16 of the mass and the 0.2 threshold matches nothing)."""
    p = call.params
    out = []
    for w in batch:
        query, refs = w.payload.payload["query"], w.payload.payload["references"]
        dq = _descriptors(call, query)["descriptors"]
        arrays, matchings = {}, []
        for i, ref in enumerate(refs):
            dr = _descriptors(call, ref)["descriptors"]
            scores = omm.score_matrix(dq, dr) / p["temperature"]
            log_plan = omm.log_sinkhorn_with_dustbin(scores, p["dustbin_z"] / p["temperature"], p["iterations"])
            m = omm.mutual_matches(np.exp(log_plan), p["threshold"])
            matchings.append(m)
            arrays.update({f"plan_{i}": np.exp(log_plan).astype(np.float32),
                           f"match_r_{i}": m.match_r.astype(np.int64),
                           f"dustbin_r_{i}": m.reference_dustbin.astype(np.float32)})
        arrays["match_q"] = np.stack([m.match_q for m in matchings]).astype(np.int64).reshape(len(refs), len(dq))
        arrays["nearest_q"] = np.stack([m.nearest_r for m in matchings]).astype(np.int64).reshape(len(refs), len(dq))
        arrays["unmatched"] = omm.unmatched_across_references(matchings, p["rule"]).astype(bool)
        call.detail.update(query_objects=len(dq), unmatched_objects=int(arrays["unmatched"].sum()))
        out.append(ItemData(arrays, {"references": [r.image_id for r in refs], "objects": int(len(dq)),
                                     "reference_objects": [int(len(m.match_r)) for m in matchings]}))
    return out


def _features(call: StageCall, image: ImageItem) -> np.ndarray:
    return np.asarray(call.read("features", image).arrays["features"], np.float32)       # C x g x g


def _missing_map(call: StageCall, match: ItemData, fq: np.ndarray, ref_feats: list[np.ndarray],
                 ref_objects: list[np.ndarray], eps: float, align: str) -> np.ndarray:
    """Reference objects no query object took: the query's features where each should be, scored against the
    k references' features there, weighted by its dustbin mass (anomflow's extension; README)."""
    maps = []
    for i, objects in enumerate(ref_objects):
        matched = match.arrays[f"match_r_{i}"] >= 0
        scores = np.zeros((len(objects), *fq.shape[1:]), np.float32)
        for j in np.nonzero(~matched)[0]:
            region = np.asarray(objects[j], np.float32)
            scores[j] = amm.object_score_map(fq, region, np.stack(ref_feats), np.stack([region] * len(ref_feats)),
                                             eps, align)
        maps.append(assemble.missing_object_maps(match.arrays[f"dustbin_r_{i}"], matched, scores))
    return assemble.combine_missing_over_references(maps) if maps else np.zeros(fq.shape[1:], np.float32)


@declare_stage("object_scores", 1, params=("eps", "align", "variant", "score_missing_objects"),
               upstream=("matching", "descriptors", "features"), produces="set")
def object_scores(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Per query object: a Gaussian per position over its k partner objects (matched, else nearest), Mahalanobis
    distance inside its mask; summed into the map (Eq. 13-15, or Eq. 16's unmatched only)."""
    p = call.params
    out = []
    for w in batch:
        query, refs = w.payload.payload["query"], w.payload.payload["references"]
        match = call.view("matching").read(w.payload.item(call.refs["matching"].side))
        fq = _features(call, query)
        q_objects = np.asarray(_descriptors(call, query)["objects"], np.float32)
        ref_feats = [_features(call, r) for r in refs]
        ref_objects = [np.asarray(_descriptors(call, r)["objects"], np.float32) for r in refs]
        object_maps = np.zeros((len(q_objects), *fq.shape[1:]), np.float32)
        for i in range(len(q_objects)):
            partners = [(ref_feats[r], ref_objects[r][_partner(match, r, i)]) for r in range(len(refs))
                        if len(ref_objects[r])]
            if partners:
                object_maps[i] = amm.object_score_map(fq, q_objects[i], np.stack([f for f, _ in partners]),
                                                      np.stack([o for _, o in partners]), p["eps"], p["align"])
        unmatched = np.asarray(match.arrays["unmatched"], bool)
        final = assemble.assemble_map(object_maps, unmatched, p["variant"])
        missing = (_missing_map(call, match, fq, ref_feats, ref_objects, p["eps"], p["align"])
                   if p["score_missing_objects"] else np.zeros_like(final))
        call.detail.update(scored_objects=len(q_objects))
        out.append(ItemData({"map": (final + missing).astype(np.float32), "missing_map": missing.astype(np.float32),
                             "object_scores": np.array([m.max() for m in object_maps], np.float32)},
                            {"unmatched": int(unmatched.sum()), "objects": int(len(q_objects))}))
    return out


def _partner(match: ItemData, reference: int, obj: int) -> int:
    """The reference object paired with query object ``obj``: its match, else its nearest by the plan."""
    matched = int(match.arrays["match_q"][reference, obj])
    return matched if matched >= 0 else int(match.arrays["nearest_q"][reference, obj])


@declare_stage("sam_lad_map", 2, params=("resolution", "smoothing_sigma"), upstream=("scores",), produces="set")
def sam_lad_map(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """The query's object map upsampled to its image size (non-square) or R x R, smoothed; score = max. One item
    per (query, references) set, like the scores, so a query whose references did not change keeps its map."""
    from tasks.datasets.image_io import image_size
    p = call.params
    out = []
    for w in batch:
        query: ImageItem = w.payload.payload["query"]
        small = call.view("scores").read(w.payload.item(call.refs["scores"].side), names=["map"]).arrays["map"]
        hw = image_size(query.record.path) if p["resolution"] == "native" else (p["resolution"],) * 2
        full = assemble.upsample_map(small, tuple(hw), p["smoothing_sigma"])
        out.append(ItemData({"map": full.astype(np.float32)}, {"score": float(full.max(initial=0.0))}))
    return out
