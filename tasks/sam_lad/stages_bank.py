"""SAM-LAD's set stages over a category: the memory bank of normal images and each query's nearest references.

  memory_bank         per set ``memory_bank:<category>`` (members: the category's normal support images):
                      features Z x D float32 (flattened DINOv2 maps, D = C*h*w; after the optional coreset)
                      meta: members [image id of each row], category, coreset (bool), support (members before
                      the coreset)
  nearest_references  per set ``references:<category>:<bank item>`` (members: the category's query images):
                      indices Q x k int64 (rows of the bank), distances Q x k float32 (L2)
                      meta: queries [image id per row], references [[image id] per query]

The bank's item id hashes its members' content, so adding one train/good image recomputes the bank and every
query's references (one exact search), and nothing downstream whose references did not change.
"""
from __future__ import annotations

import math

import numpy as np

from stores import ItemData
from tasks.engine.context import ImageItem
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.sam_lad import bank


def bank_set(category: str, support: list[ImageItem], queries: list[ImageItem]) -> ItemSet:
    """The memory bank of one category: its normal support images; its queries fail with it."""
    return ItemSet(f"memory_bank:{category}", tuple(support), tuple(queries), {"category": category})


def references_set(category: str, bank_item: str, queries: list[ImageItem]) -> ItemSet:
    """Every query of one category searched against one bank item (its id names the bank's content)."""
    return ItemSet(f"references:{category}:{bank_item}", tuple(queries), tuple(queries),
                   {"category": category, "bank_item": bank_item})


def _flat_features(call: StageCall, image: ImageItem) -> np.ndarray:
    return np.asarray(call.read("features", image, names=["features"]).arrays["features"], np.float32).reshape(-1)


@declare_stage("memory_bank", 1, params=("coreset_fraction", "coreset_seed"), upstream=("features",), produces="set")
def memory_bank(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Stack each category's normal features (rows in image-id order); k-center greedy coreset when asked."""
    out = []
    for w in batch:
        group: ItemSet = w.payload
        members = sorted(group.members, key=lambda m: m.image_id)
        if not members:
            category = group.payload["category"]
            where = "/".join(s for s in (call.ctx.dataset_root, category, "train", "good") if s)
            raise ValueError(f"category {category}: no normal support images: {where} is empty or none of its "
                             "images could be read")
        features = np.stack([_flat_features(call, m) for m in members])
        rows = np.arange(len(members))
        fraction = call.params["coreset_fraction"]
        if fraction is not None and fraction < 1.0:
            count = max(1, math.ceil(fraction * len(members)))
            rows = np.sort(bank.kcenter_greedy(features, count, call.params["coreset_seed"]))
        call.detail.update(bank_images=len(rows))
        out.append(ItemData({"features": features[rows]},
                            {"members": [members[i].image_id for i in rows], "category": group.payload["category"],
                             "coreset": bool(len(rows) < len(members)),
                             "support": [m.image_id for m in members]}))
    return out


@declare_stage("nearest_references", 1, params=("k", "random_single_reference", "seed"),
               upstream=("bank", "features"), produces="set")
def nearest_references(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """The k nearest bank images of every query (L2 on flattened maps, exact); a query's own content is skipped."""
    out = []
    for w in batch:
        group: ItemSet = w.payload
        stored = call.view("bank").read(group.payload["bank_item"])
        members = list(stored.meta["members"])
        queries = sorted(group.members, key=lambda m: m.image_id)
        row_of = {m: i for i, m in enumerate(members)}
        exclude = np.array([row_of.get(q.image_id, -1) for q in queries], np.int64)
        usable = len(members) - (exclude >= 0)
        if (usable < 1).any():
            raise ValueError(f"category {group.payload['category']}: the memory bank holds only the query itself")
        k = min(int(call.params["k"]), int(usable.min()))   # a small bank gives fewer references (meta says)
        q = np.stack([_flat_features(call, m) for m in queries])
        idx, dist = bank.nearest_references(stored.arrays["features"], q, k, exclude=exclude)
        if call.params["random_single_reference"]:
            picked = bank.random_single_reference(idx, call.params["seed"])        # Q x 1
            column = (idx == picked).argmax(1)[:, None]
            idx, dist = picked, np.take_along_axis(dist, column, 1)
        out.append(ItemData({"indices": idx.astype(np.int64), "distances": dist.astype(np.float32)},
                            {"queries": [m.image_id for m in queries],
                             "references": [[members[j] for j in row] for row in idx]}))
    return out
