"""MVTec LOCO evaluation as a cached stage: one set item per category, the official metrics.

  loco_evaluation   per set (a category's scored images; their content hashes and ground-truth hashes are in
                    the item id; the category's defects_config.json hash is a parameter): scores N float32 (max of
                    each map), labels N int8      meta: members [image id], metrics {name: value | None} (image
                    AUROC and AUsPRO at each max FPR, for logical and structural anomalies and their mean),
                    curves (down-sampled sPRO curves), failures {image id: reason}, notes [str]

Maps are at each image's full size (``eval_resolution=native``); the ground truth is the LOCO channel PNGs of
``tasks.datasets.loco``. A missing or broken defects_config.json leaves image AUROC and drops sPRO, with a note;
a channel PNG that cannot be used fails that image only.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from stores import ItemData
from tasks import metrics_loco
from tasks.datasets import loco
from tasks.datasets.image_io import image_size
from tasks.datasets.records import DatasetError, ImageError
from tasks.engine.context import ImageItem
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.report.evaluation_stage import map_item

KINDS = ("logical_anomalies", "structural_anomalies")


def defects_config_hash(root: str, category: str) -> str:
    """sha256 of a category's defects_config.json, or ``absent`` (a parameter of the stage: it is in the key)."""
    path = loco.defects_config_path(root, category)
    from tasks.datasets.image_io import file_sha256
    return file_sha256(path) if os.path.isfile(path) else "absent"


def _channels(image: ImageItem, defects: dict | None) -> list[metrics_loco.DefectChannel]:
    rec = image.record
    if rec.label == 0 or defects is None:
        return []
    hw = image_size(rec.path)
    return [metrics_loco.DefectChannel(mask, loco.saturation_area(int(mask.sum()), spec))
            for mask, spec in loco.read_loco_channels(rec.mask_path, hw, defects)]


def flat_metrics(result: dict, with_spro: bool) -> dict[str, float | None]:
    """``image_auroc_<kind>`` and ``auspro_<max fpr>_<kind>`` (kind: logical, structural, mean) for report.json."""
    flat = {f"image_auroc_{kind}": result["image_auroc"].get(kind) for kind in ("logical", "structural", "mean")}
    for limit, values in result["auspro"].items():
        for kind in ("logical", "structural", "mean"):
            flat[f"auspro_{limit}_{kind}"] = values.get(kind) if with_spro else None
    return flat


def metric_definition(key: str) -> str:
    """What a LOCO metric key of :func:`flat_metrics` means (report.json ``metric_definitions``)."""
    kind = key.rsplit("_", 1)[-1]
    against = {"logical": "good and logical_anomalies images", "structural": "good and structural_anomalies images",
               "mean": "the mean of the logical and the structural value"}[kind]
    if key.startswith("image_auroc"):
        return f"MVTec LOCO image AUROC (score = the map's maximum; sklearn roc_auc_score) on {against}"
    limit = key.split("_")[1]
    return (f"MVTec LOCO AUsPRO up to FPR {limit} on {against}: per-defect saturated PRO from defects_config.json, "
            "thresholds refined as the official evaluation 2.0 does, trapezoid with the interpolated end point, "
            f"divided by {limit}")


def _image_auroc_only(kept: list[ImageItem], scores: np.ndarray, max_fprs: list[float]) -> dict:
    """The result layout of ``evaluate_loco_category`` with image AUROC only (a category without defects_config)."""
    from sklearn.metrics import roc_auc_score
    kinds = np.array([m.record.defect_type for m in kept])
    auroc: dict[str, float | None] = {}
    for kind, name in zip(KINDS, ("logical", "structural")):
        chosen = (kinds == "good") | (kinds == kind)
        labels = kinds[chosen] == kind
        auroc[name] = float(roc_auc_score(labels, scores[chosen])) if 0 < labels.sum() < len(labels) else None
    both = [auroc["logical"], auroc["structural"]]
    auroc["mean"] = None if None in both else 0.5 * (both[0] + both[1])
    return {"image_auroc": auroc, "auspro": {str(float(m)): {} for m in max_fprs},
            "undefined": {"auspro": "no defects_config.json"}, "thresholds": {}, "curves": {}}


def _evaluate(call: StageCall, group: ItemSet) -> ItemData:
    p = call.params
    category = group.payload["category"]
    members = sorted(group.members, key=lambda m: m.image_id)
    notes: list[str] = []
    defects = None
    try:
        defects = loco.read_defects_config(loco.defects_config_path(call.ctx.dataset_root, category))
    except DatasetError as exc:
        notes.append(f"category {category}: no AUsPRO: {exc}")
    failures: dict[str, str] = {}
    for m in members:                          # ground truth usable? (read again when streaming)
        if m.record.defect_type not in ("good", *KINDS):
            failures[m.image_id] = f"{m.record.path}: not a MVTec LOCO test image (folder {m.record.defect_type})"
            continue
        try:
            _channels(m, defects)
        except ImageError as exc:
            failures[m.image_id] = f"ground truth {exc.path}: {exc.reason}"
    kept = [m for m in members if m.image_id not in failures]
    view = call.ctx.store.open(call.refs["maps"], cache_bytes=16 << 20)

    def images() -> Iterator[metrics_loco.LocoImage]:
        for m in kept:
            yield metrics_loco.LocoImage(m.record.defect_type, view.read(map_item(call, m)).arrays["map"],
                                         _channels(m, defects), name=m.record.relpath)

    scores = np.array([float(view.read(map_item(call, m)).arrays["map"].max()) for m in kept], np.float32)
    if defects is not None:
        result = metrics_loco.evaluate_loco_category(images, max_fprs=tuple(p["max_fprs"]),
                                                     curve_max_distance=p["curve_max_distance"])
    else:   # no saturation rules: image AUROC only
        result = _image_auroc_only(kept, scores, p["max_fprs"])
    labels = np.array([m.record.label for m in kept], np.int8)
    return ItemData({"scores": scores, "labels": labels},
                    {"members": [m.image_id for m in kept], "metrics": flat_metrics(result, defects is not None),
                     "curves": result["curves"] if defects is not None else {}, "undefined": result["undefined"],
                     "thresholds": result["thresholds"], "failures": failures, "notes": notes,
                     "norm": None, "constant_maps": False})


@declare_stage("loco_evaluation", 2, params=("max_fprs", "curve_max_distance", "defects_config", "map_items"),
               upstream=("maps",), produces="set", side_inputs=("mask",))
def loco_evaluation(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each item: one category's image scores and LOCO metrics (module docstring)."""
    return [_evaluate(call, w.payload) for w in batch]
