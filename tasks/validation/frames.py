"""The tables the suites validate, as plain columns (no pandas: a warm run hashes them and never builds a frame).

manifest  one row per input file of every role (score, support, training):
          role, path (relpath), category, split, label (1 anomalous, 0 good, -1 unknown), id (sha256; None when the
          file was never hashed), usable (1: went through the run; 0: failed, see reason), reason, width, height,
          mode, channels, mean_r/g/b, std_r/g/b, std_max, size_is_category_mode, mode_is_category_mode,
          gt_required (1: an anomalous image of a dataset with pixel ground truth), gt_present, gt_size_ok,
          counted (1: the run's own dataset, counted per category and split; 0: a training dataset),
          group (category/split)
outputs   one row per scored image of report.json: path, id, category, label, score (None when not finite),
          map_found, map_height, map_width, expected_height, expected_width, map_nonfinite, map_min, map_max,
          category_maps_vary
metrics   one row per defined metric value: row (category/metric), category (or "mean"), metric, value
Statistics columns are None where a row has none (failed files); GX skips nulls except where it checks them.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from stores import ItemData
from tasks.datasets import load_dataset
from tasks.datasets.records import DatasetError, ImageRecord
from tasks.engine.context import ImageItem

PIXEL_GROUND_TRUTH_KINDS = ("mvtec", "visa", "loco")   # datasets whose anomalous images have masks


@dataclass(frozen=True)
class Entry:
    """One input file of the run: its record, its item (None when it failed before hashing), why it failed."""

    role: str
    kind: str
    record: ImageRecord
    item: ImageItem | None
    reason: str | None


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list]:
    return {n: [r.get(n) for r in rows] for n in names}


def finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def role_entries(state) -> list[Entry]:
    """Every file of every input role. Support and training records of failed files are listed again (the run
    keeps only their paths), which reads folder listings, never images."""
    alive = {i.record.path: i for i in state.alive}
    entries = [Entry("score", state.dataset.kind, r, alive.get(r.path), state.tracker.failures.get(r.path))
               for r in state.records]
    for role, inputs in state.roles.items():
        spec = state.dataset if role == "support" else state.dataset.training
        splits = spec.support_splits if role == "support" else (spec.split,)
        entries += [Entry(role, spec.kind, i.record, i, None) for i in inputs.items]
        failed = inputs.tracker.failures
        if failed:
            try:
                records = [r for s in splits for r in load_dataset(spec.kind, spec.root, list(spec.categories or [])
                                                                  or None, s) if r.path in failed]
            except DatasetError:
                records = []
            listed = {r.path for r in records}
            records += [ImageRecord(p, p, "", "", None, "") for p in failed if p not in listed]
            entries += [Entry(role, spec.kind, r, None, failed[r.path]) for r in records]
    return entries


def manifest_columns(entries: list[Entry], stats: dict[str, ItemData], stats_failed: dict[str, str]
                     ) -> dict[str, list]:
    """stats: image id -> its ``image_statistics`` item; stats_failed: image id -> why it has none."""
    rows = []
    for e in entries:
        rec = e.record
        data = stats.get(e.item.image_id) if e.item else None
        reason = e.reason or (stats_failed.get(e.item.image_id) if e.item and data is None else None)
        row: dict[str, Any] = {"role": e.role, "path": rec.relpath, "category": rec.category, "split": rec.split,
                               "label": -1 if rec.label is None else int(rec.label),
                               "id": e.item.image_id if e.item else None,
                               "usable": int(reason is None and data is not None), "reason": reason or "",
                               "gt_required": int(rec.label == 1 and e.kind in PIXEL_GROUND_TRUTH_KINDS),
                               "counted": int(e.role != "training"), "group": f"{rec.category}/{rec.split}"}
        if data is not None:
            h, w = (int(v) for v in data.arrays["size"])
            mean, std = data.arrays["mean"].tolist(), data.arrays["std"].tolist()
            gt = data.meta["gt"]
            row.update(width=w, height=h, mode=data.meta["mode"], channels=data.meta["channels"],
                       mean_r=mean[0], mean_g=mean[1], mean_b=mean[2], std_r=std[0], std_g=std[1], std_b=std[2],
                       std_max=max(std), gt_present=int(gt["present"]),
                       gt_size_ok=int(all(s == [h, w] for s in gt["sizes"])) if gt["present"] else None)
        rows.append(row)
    _mark_category_mode(rows, "size", lambda r: (r["width"], r["height"]))
    _mark_category_mode(rows, "mode", lambda r: r["mode"])
    return _columns(rows, ("role", "path", "category", "split", "label", "id", "usable", "reason", "width", "height",
                           "mode", "channels", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "std_max",
                           "size_is_category_mode", "mode_is_category_mode", "gt_required", "gt_present",
                           "gt_size_ok", "counted", "group"))


def _mark_category_mode(rows: list[dict], name: str, value) -> None:
    """Column ``<name>_is_category_mode``: 1 when the row's value is its category's most common one."""
    counts: dict[str, Counter] = {}
    for r in rows:
        if "width" in r:
            counts.setdefault(r["category"], Counter())[value(r)] += 1
    for r in rows:
        if "width" in r:
            r[f"{name}_is_category_mode"] = int(value(r) == counts[r["category"]].most_common(1)[0][0])


def count_groups(entries: list[Entry]) -> list[tuple[str, str]]:
    """(category, split) pairs the run reads: every category of its dataset with the score and support splits."""
    categories = sorted({e.record.category for e in entries if e.role == "score"})
    splits = list(dict.fromkeys(e.record.split for e in entries if e.role in ("score", "support") and e.record.split))
    return [(c, s) for c in categories for s in splits]


def expected_size(resolution: Any, image_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """The map size the evaluation works at: R x R, or the image's own H x W (``native``); None if unknown."""
    if isinstance(resolution, int):
        return resolution, resolution
    return image_hw if resolution == "native" else None


def outputs_columns(images: list[dict], items: dict[str, ImageItem], map_stats: dict[str, ItemData],
                    image_stats: dict[str, ItemData], resolution: Any) -> dict[str, list]:
    """images: report.json ``images``; map_stats: image id -> its ``map_statistics`` item."""
    rows = []
    for img in images:
        item, data = items.get(img["id"]), map_stats.get(img["id"])
        size = image_stats[img["id"]].arrays["size"] if img["id"] in image_stats else None
        expected = expected_size(resolution, (int(size[0]), int(size[1])) if size is not None else None)
        row = {"path": item.record.relpath if item else img["path"], "id": img["id"], "category": img["category"],
               "label": -1 if img["label"] is None else int(img["label"]), "score": finite(img["score"]),
               "map_found": int(data is not None),
               "expected_height": expected[0] if expected else None,
               "expected_width": expected[1] if expected else None}
        if data is not None:
            row.update(map_height=int(data.arrays["shape"][0]), map_width=int(data.arrays["shape"][1]),
                       map_nonfinite=int(data.arrays["nonfinite"]), map_min=data.meta["min"], map_max=data.meta["max"])
        rows.append(row)
    spread: dict[str, list[float]] = {}
    for r in rows:
        if r.get("map_min") is not None:
            lo_hi = spread.setdefault(r["category"], [r["map_min"], r["map_max"]])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], r["map_min"]), max(lo_hi[1], r["map_max"])
    for r in rows:
        r["category_maps_vary"] = int(r["category"] in spread and spread[r["category"]][1] > spread[r["category"]][0])
    return _columns(rows, ("path", "id", "category", "label", "score", "map_found", "map_height", "map_width",
                           "expected_height", "expected_width", "map_nonfinite", "map_min", "map_max",
                           "category_maps_vary"))


def metrics_columns(metrics: dict[str, dict[str, float | None]]) -> dict[str, list]:
    """report.json ``metrics`` ({category or "mean": {metric: value}}), defined values only."""
    rows = [{"row": f"{category}/{name}", "category": category, "metric": name, "value": finite(value)}
            for category, values in sorted(metrics.items()) for name, value in values.items() if value is not None]
    return _columns(rows, ("row", "category", "metric", "value"))
