"""The calibrated thresholds as an artifact: the ``decision_thresholds`` set stage.

  decision_thresholds   one set item per category: threshold () float64
                        meta: category, rule (target_frr | f1_max), n_good, n_anomalous, empirical_frr, f1,
                        target_frr

The item's set name carries a sha256 of the category's calibration scores (image ids, labels and float32 image
scores, as the calibration run's evaluation produced them), its members are those images, and the stage key
holds the target FRR and the rule code's version: the same scores, labels and target give the same item, and a
second identical calibration reuses it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from stores import ArtifactRef, ItemData
from tasks.datasets.records import ImageRecord
from tasks.decisions.thresholds import CategoryThreshold, choose_threshold
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.runner import StageStats, WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage


@dataclass(frozen=True)
class CategoryScores:
    """One category's calibration images: ids (N), labels N int8 (1, 0, -1 unlabelled), scores N float32."""

    category: str
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray

    def digest(self) -> str:
        """sha256 over the ids, labels and scores in id order."""
        order = np.argsort(np.array(self.ids))
        h = hashlib.sha256()
        h.update("\n".join(self.ids[i] for i in order).encode())
        h.update(np.ascontiguousarray(self.labels[order], np.int8).tobytes())
        h.update(np.ascontiguousarray(self.scores[order], "<f4").tobytes())
        return h.hexdigest()


def scores_by_category(images: list[dict[str, Any]]) -> dict[str, CategoryScores]:
    """report["images"] ({id, path, category, label, score}) -> per-category calibration scores."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for image in images:
        grouped.setdefault(image["category"], []).append(image)
    return {cat: CategoryScores(cat, tuple(i["id"] for i in rows), tuple(i["path"] for i in rows),
                                np.array([-1 if i["label"] is None else i["label"] for i in rows], np.int8),
                                np.array([i["score"] for i in rows], np.float32))
            for cat, rows in sorted(grouped.items())}


def _item_set(scores: CategoryScores, root: str) -> ItemSet:
    members = tuple(ImageItem(image_id, ImageRecord(path, os.path.relpath(path, root), scores.category, "",
                                                    None if label < 0 else int(label), ""))
                    for image_id, path, label in zip(scores.ids, scores.paths, scores.labels))
    return ItemSet(f"decision_thresholds:{scores.category}:{scores.digest()}", members, members, scores)


@declare_stage("decision_thresholds", 1, params=("target_frr",), produces="set")
def decision_thresholds(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each item: one category's threshold (tasks.decisions.thresholds.choose_threshold)."""
    out = []
    for work in batch:
        scores: CategoryScores = work.payload.payload
        chosen = choose_threshold(scores.scores, scores.labels, call.params["target_frr"])
        out.append(ItemData({"threshold": np.float64(chosen.threshold)},
                            {"category": scores.category, "rule": chosen.rule, "n_good": chosen.n_good,
                             "n_anomalous": chosen.n_anomalous, "empirical_frr": chosen.empirical_frr,
                             "f1": chosen.f1, "target_frr": call.params["target_frr"]}))
    return out


@dataclass
class Calibration:
    """What calibrating a run's categories gave: the artifact, each category's threshold and item id, the
    categories left without one (category -> reason), and the stage's statistics."""

    ref: ArtifactRef | None
    thresholds: dict[str, CategoryThreshold]
    items: dict[str, str]
    skipped: dict[str, str]
    stats: StageStats | None


def calibrate_categories(ctx: RunContext, images: list[dict[str, Any]], root: str,
                         target_frr: float) -> Calibration:
    """Run ``decision_thresholds`` over the categories of a calibration run's report images (cached per
    category) and read the thresholds back. A category without a good image is skipped with the reason."""
    by_category = scores_by_category(images)
    skipped = {cat: "no good image to calibrate on (every image is labelled anomalous)"
               for cat, s in by_category.items() if not (s.labels != 1).any()}
    sets = {cat: _item_set(s, root) for cat, s in by_category.items() if cat not in skipped}
    if not sets:
        return Calibration(None, {}, {}, skipped, None)
    result = decision_thresholds(ctx, params={"target_frr": float(target_frr)}, sets=list(sets.values()))
    view = ctx.store.open(result.ref)
    thresholds, items = {}, {}
    for cat, group in sets.items():
        item = group.item(result.ref.side)
        if not view.has(item):
            skipped[cat] = "; ".join(sorted(set(result.failures.values()))) or "its threshold was not computed"
            continue
        data = view.read(item)
        m = data.meta
        thresholds[cat] = CategoryThreshold(float(data.arrays["threshold"]), m["rule"], m["n_good"],
                                            m["n_anomalous"], m["empirical_frr"], m["f1"])
        items[cat] = item
    return Calibration(result.ref, thresholds, items, skipped, result.stats)
