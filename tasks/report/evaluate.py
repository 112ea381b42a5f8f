"""Per-category evaluation: normalise the maps, score the images, compare with ground truth."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import tifffile
from prefect import task
from prefect.cache_policies import NO_CACHE

from stores import ArtifactRef
from tasks import metrics
from tasks.datasets.image_io import image_size, read_mask
from tasks.datasets.records import ImageError, ImageRecord
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.runner import image_item
from tasks.saa import fusion


@dataclass
class CategoryResult:
    category: str
    images: list[dict] = field(default_factory=list)        # {id, path, category, label, score}
    failures: dict[str, str] = field(default_factory=dict)  # path -> reason
    metrics: dict[str, float | None] | None = None
    previews: list[tuple[ImageRecord, np.ndarray]] = field(default_factory=list)  # (record, R x R map)
    constant_maps: bool = False   # category min-max normalisation met one value everywhere (official: NaN)


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
    return cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def save_map(out_dir: str, rec: ImageRecord, anomaly_map: np.ndarray) -> str:
    path = os.path.join(out_dir, map_relpath(rec))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    tifffile.imwrite(tmp, anomaly_map.astype(np.float32))
    os.replace(tmp, path)
    return path


def _ground_truth(rec: ImageRecord, resolution: int) -> np.ndarray | None:
    """R x R bool ground truth, None when the dataset has no labels."""
    if rec.label is None:
        return None
    if rec.label == 0 or not rec.mask_path:
        return np.zeros((resolution, resolution), bool)
    return metrics.resize_mask(read_mask(rec.mask_path, image_size(rec.path)), resolution)


@task(cache_policy=NO_CACHE, persist_result=False)
def evaluate_category(ctx: RunContext, category: str, images: list[ImageItem], maps: ArtifactRef,
                      resolution: int, normalise: str, save_maps_dir: str | None, previews: int = 4,
                      with_pro: bool = True) -> CategoryResult:
    result = CategoryResult(category)
    view = ctx.store.open(maps)
    kept, raw, gts = [], [], []
    for item in images:
        try:
            gt = _ground_truth(item.record, resolution)
        except ImageError as exc:
            result.failures[item.record.path] = f"ground truth {exc.path}: {exc.reason}"
            continue
        kept.append(item)
        raw.append(view.read(image_item(maps, item)).arrays["map"])
        gts.append(gt)
    if not kept:
        return result
    maps_arr = np.stack(raw)
    if normalise == "category_minmax":
        result.constant_maps = bool(maps_arr.max() <= maps_arr.min())
        maps_arr = fusion.minmax_normalise(maps_arr)
    scores = fusion.image_scores(maps_arr)
    for item, m, s in zip(kept, maps_arr, scores):
        rec = item.record
        result.images.append({"id": item.image_id, "path": rec.path, "category": rec.category,
                              "label": rec.label, "score": float(s)})
        if save_maps_dir:   # at the image's own size: the official MVTec AD / LOCO scripts accept no other
            save_map(save_maps_dir, rec, resize_to(m, image_size(rec.path)))
    order = np.argsort(-scores)[:previews]
    result.previews = [(kept[i].record, maps_arr[i]) for i in order]
    if all(g is not None for g in gts):
        labels = np.array([it.record.label for it in kept])
        result.metrics = {**metrics.pixel_metrics(maps_arr, np.stack(gts), pro=with_pro),
                          **metrics.image_metrics(scores, labels)}
    return result
