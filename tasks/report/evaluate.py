"""Per-category evaluation results: the cached ``category_evaluation`` items, saved maps, and where the report's
previews (``tasks.report.figures_stage``: top-N and bottom-N overlays, curves, histograms) find their inputs."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from stores import ArtifactRef
from tasks.datasets.image_io import image_size
from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.run_state import RunState
from tasks.engine.runner import image_item
from tasks.engine.stage import ItemSet
from tasks.report.evaluation_stage import category_evaluation, normalised


class PreviewSource:
    """What the report's figures of one category are made from: the run, its evaluation item's artifact, the maps
    and their item table, the category's members (the evaluation set), and N of the top-N / bottom-N previews.

    A plain class, not a dataclass: Prefect walks the dataclasses among a task's arguments, and this one leads to
    every record of the run."""

    __slots__ = ("ctx", "run", "evaluation", "maps", "members", "map_items", "previews")

    def __init__(self, ctx: RunContext, run: RunState, evaluation: ArtifactRef, maps: ArtifactRef,
                 members: tuple[ImageItem, ...], map_items: dict[str, str], previews: int) -> None:
        self.ctx, self.run, self.evaluation, self.maps = ctx, run, evaluation, maps
        self.members, self.map_items, self.previews = members, map_items, previews


@dataclass
class CategoryResult:
    category: str
    images: list[dict] = field(default_factory=list)        # {id, path, category, label, score}
    failures: dict[str, str] = field(default_factory=dict)  # path -> reason
    metrics: dict[str, float | None] | None = None
    constant_maps: bool = False   # category min-max normalisation met one value everywhere (official: NaN)
    source: PreviewSource | None = None   # None: no figures (a result built outside a run)


def map_relpath(rec: ImageRecord) -> str:
    """Where a saved map goes: ``<category>/test/<defect>/<name>.tiff``, the MVTec evaluation layout."""
    parts = rec.relpath.split("/")
    if len(parts) == 4 and parts[1] == "test":
        return f"{parts[0]}/test/{parts[2]}/{rec.stem}.tiff"
    defect = rec.defect_type or "unlabelled"
    sub = "/".join(parts[1:-1]).replace("/", "_")
    name = f"{sub}_{rec.stem}" if sub and not rec.defect_type else rec.stem
    return f"{rec.category}/test/{defect}/{name}.tiff"


def resize_to(anomaly_map: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """R x R -> H x W float32, bilinear (cv2, half-pixel centres)."""
    h, w = int(hw[0]), int(hw[1])
    if anomaly_map.shape == (h, w):
        return anomaly_map.astype(np.float32, copy=False)
    import cv2   # here: a warm run resizes nothing

    return cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def save_map(out_dir: str, rec: ImageRecord, anomaly_map: np.ndarray) -> str:
    path = os.path.join(out_dir, map_relpath(rec))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    import tifffile

    tifffile.imwrite(tmp, anomaly_map.astype(np.float32))
    os.replace(tmp, path)
    return path


def evaluate_categories(ctx: RunContext, run: RunState, maps: ArtifactRef | dict[str, ArtifactRef],
                        resolution: int | str, normalise: str, save_maps_dir: str | None,
                        scores: ArtifactRef | None = None, previews: int = 4, with_pro: bool = True,
                        max_fprs: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0),
                        map_items: dict[str, str] | None = None) -> list[CategoryResult]:
    """Run the cached ``category_evaluation`` stage (one set item per category) and turn its items into results.

    maps: one artifact for every category, or one per category. scores: an optional per-image score artifact
    (``score`` scalar per image) used instead of each map's maximum. Saved maps read the maps; previews (N top and
    N bottom images, drawn when the report is written) read only the maps they show. map_items: {image id: item id} when the maps artifact does not key its items by image (its ids
    enter the evaluation's key, per category)."""
    by_category: dict[str, list[ImageItem]] = defaultdict(list)
    for item in run.alive:
        by_category[item.record.category].append(item)
    groups = {cat: ItemSet(f"category:{cat}", tuple(items), tuple(items), {"category": cat})
              for cat, items in by_category.items()}
    loco = run.dataset.kind == "loco"
    if loco:   # MVTec LOCO: image AUROC and AUsPRO, logical / structural (tasks.report.loco_evaluation_stage)
        from tasks.report.loco_evaluation_stage import defects_config_hash, loco_evaluation
        stage, params = loco_evaluation, {"max_fprs": list(max_fprs), "curve_max_distance": 0.01,
                                          "defects_config": {c: defects_config_hash(run.dataset.root, c)
                                                             for c in sorted(groups)}}
    else:
        stage, params = category_evaluation, {"normalise": normalise, "resolution": resolution, "pro": with_pro}
    per_ref: dict[ArtifactRef, list[str]] = defaultdict(list)
    for cat in sorted(groups):
        per_ref[maps[cat] if isinstance(maps, dict) else maps].append(cat)
    results = []
    for ref, cats in per_ref.items():
        mapped = {m.image_id: map_items[m.image_id] for c in cats for m in groups[c].members
                  if map_items and m.image_id in map_items}
        evaluated = stage(ctx, params={**params, "map_items": mapped},
                          upstream={"maps": ref, **({} if loco else {"scores": scores})},
                          sets=[groups[c] for c in cats])
        run.absorb(ctx, evaluated)
        view, map_view = ctx.store.open(evaluated.ref), ctx.store.open(ref)
        for cat in cats:
            item = groups[cat].item(evaluated.ref.side)
            if view.has(item):
                run.notes.extend(view.meta(item).get("notes", []))
                source = PreviewSource(ctx, run, evaluated.ref, ref, groups[cat].members, mapped, previews)
                results.append(_category_result(cat, view.read(item), groups[cat], ref, map_view, source,
                                                save_maps_dir, mapped))
    return sorted(results, key=lambda r: r.category)


def _category_result(category: str, data, group: ItemSet, maps: ArtifactRef, map_view, source: PreviewSource,
                     save_maps_dir: str | None, map_items: dict[str, str]) -> CategoryResult:
    meta = data.meta
    by_id = {m.image_id: m for m in group.members}
    norm = tuple(meta["norm"]) if meta["norm"] else None
    result = CategoryResult(category, metrics=meta["metrics"], constant_maps=meta["constant_maps"], source=source)
    result.failures = {by_id[i].record.path: reason for i, reason in meta["failures"].items()}
    kept = [by_id[i] for i in meta["members"]]
    image_scores = data.arrays["scores"]
    for item, score in zip(kept, image_scores):
        rec = item.record
        result.images.append({"id": item.image_id, "path": rec.path, "category": rec.category,
                              "label": rec.label, "score": float(score)})
    read = (lambda item: normalised(map_view.read(map_items.get(item.image_id) or image_item(maps, item))
                                    .arrays["map"], norm))
    if save_maps_dir:   # at the image's own size: the official MVTec AD / LOCO scripts accept no other
        for item in kept:
            save_map(save_maps_dir, item.record, resize_to(read(item), image_size(item.record.path)))
    return result
