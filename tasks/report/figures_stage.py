"""The report's pictures as a cached stage, so that a warm run reads bytes instead of importing matplotlib.

  report_figures   per set (a category's evaluated images; the decision threshold is in the set's name, so both
                   are in the item id; N and the thumbnail size are parameters):
                   curves  uint8 PNG bytes (ROC / PR / PRO panels; empty when no curve is defined)
                   histogram  uint8 PNG bytes (image scores of good against anomalous images, the threshold marked)
                   thumbnails  uint8, the JPEG bytes of T thumbnails concatenated; thumbnail_offsets  T+1 int64
                   meta: thumbnails [{id, relpath, score, label, defect, rank: "top" | "bottom"}], notes [str]

Upstream: the category's evaluation item (``category_evaluation``: pixel curve points, image scores; or
``loco_evaluation``: image scores and sPRO curves) and the maps (read only for the 2 x N thumbnails).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from stores import ItemData
from tasks import metrics
from tasks.datasets.image_io import image_size, read_label_map, read_mask
from tasks.datasets.records import ImageError, ImageRecord
from tasks.engine.context import ImageItem
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.report import figures
from tasks.report.evaluation_stage import map_item, normalised

THUMBNAIL_PX = 160      # the longer side of an overlay thumbnail
PRO_LIMIT = 0.3          # the PRO / sPRO panels stop at this FPR (MVTec AD's AUPRO limit)
LOCO_KINDS = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


def figure_set(category: str, members: tuple[ImageItem, ...], threshold: float | None) -> ItemSet:
    """The set item of one category's figures; the threshold (repr, exact) is part of its name and id."""
    return ItemSet(f"report_figures:{category}:threshold={threshold!r}", members, (),
                   {"category": category, "threshold": threshold})


def truth_mask(rec: ImageRecord, hw: tuple[int, int]) -> np.ndarray | None:
    """H x W bool ground truth for the contours: the mask file, or (MVTec LOCO) the union of the channel PNGs."""
    if rec.label != 1 or not rec.mask_path:
        return None
    if not os.path.isdir(rec.mask_path):
        return read_mask(rec.mask_path, hw)
    union = np.zeros(hw, bool)
    for name in sorted(n for n in os.listdir(rec.mask_path) if n.endswith(".png") and not n.startswith(".")):
        union |= read_label_map(os.path.join(rec.mask_path, name), hw) != 0
    return union


def mvtec_panels(pixel: dict | None, scores: np.ndarray, labels: np.ndarray) -> list[figures.Panel]:
    """ROC, PR (pixel and image) and PRO up to FPR 0.3; [] when nothing is labelled."""
    image = metrics.image_curves(scores, labels) if labels.size and (labels >= 0).all() else None
    if pixel is None and image is None:
        return []
    image = figures.thin(image) if image else None
    roc = figures.Panel("ROC", "false positive rate", "true positive rate", diagonal=True)
    pr = figures.Panel("precision-recall", "recall", "precision")
    for name, curve in (("pixel", pixel if pixel and any(pixel["fpr"]) else None), ("image", image)):
        if curve is not None:
            roc.lines.append(figures.roc_line(name, curve))
    for name, curve in (("pixel", pixel), ("image", image)):
        if curve is not None:
            pr.lines.append(figures.pr_line(name, curve))
    pro = figures.Panel(f"PRO (FPR <= {PRO_LIMIT})", "false positive rate", "per-region overlap", xmax=PRO_LIMIT)
    if pixel is not None and "pro" in pixel:
        pro.lines.append(figures.limited_line("pixel", pixel["fpr"], pixel["pro"], PRO_LIMIT))
    return [roc, pr, pro]


def loco_panels(spro: dict, scores: np.ndarray, kinds: list[str]) -> list[figures.Panel]:
    """Image ROC of logical and structural anomalies (each against the good images) and their sPRO curves."""
    roc = figures.Panel("image ROC", "false positive rate", "true positive rate", diagonal=True)
    curve_panel = figures.Panel(f"sPRO (FPR <= {PRO_LIMIT})", "false positive rate", "sPRO", xmax=PRO_LIMIT)
    kind_of = np.array(kinds)
    for name, folder in LOCO_KINDS.items():
        chosen = (kind_of == "good") | (kind_of == folder)
        curve = metrics.image_curves(scores[chosen], (kind_of[chosen] == folder).astype(np.int8))
        if curve is not None:
            roc.lines.append(figures.roc_line(name, figures.thin(curve)))
        points = (spro or {}).get(name)
        if points:
            order = np.argsort(points["fpr"], kind="stable")
            curve_panel.lines.append(figures.limited_line(name, np.asarray(points["fpr"])[order].tolist(),
                                                          np.asarray(points["spro"])[order].tolist(), PRO_LIMIT))
    return [roc, curve_panel]


def score_groups(labels: np.ndarray, kinds: list[str], scores: np.ndarray, loco: bool) -> dict[str, np.ndarray]:
    """Scores split for the histogram: good / anomalous / unlabelled, or LOCO's two anomaly kinds."""
    kind_of = np.array(kinds)
    if loco:
        return {"good": scores[kind_of == "good"], **{name: scores[kind_of == folder]
                                                      for name, folder in LOCO_KINDS.items()}}
    return {"good": scores[labels == 0], "anomalous": scores[labels == 1], "unlabelled": scores[labels < 0]}


def ranked(scores: np.ndarray, top_n: int) -> list[tuple[int, str]]:
    """(index, "top" | "bottom"): the top_n highest scores, then the top_n lowest of the others."""
    order = np.argsort(-scores, kind="stable")
    top = [int(i) for i in order[:top_n]]
    bottom = [int(i) for i in order[::-1] if int(i) not in top][:top_n]
    return [(i, "top") for i in top] + [(i, "bottom") for i in bottom]


def _thumbnails(call: StageCall, kept: list[ImageItem], scores: np.ndarray, norm, notes: list[str]
                ) -> tuple[list[np.ndarray], list[dict]]:
    p = call.params
    maps = call.view("maps")
    images, described = [], []
    for index, rank in ranked(scores, p["top_n"]):
        m = kept[index]
        rec = m.record
        try:
            rgb = call.pixels(m)
        except ImageError as exc:
            notes.append(f"thumbnail of {rec.relpath} left out: {exc.reason}")
            continue
        amap = normalised(maps.read(map_item(call, m)).arrays["map"], norm)
        try:
            mask = truth_mask(rec, image_size(rec.path))
        except ImageError as exc:
            mask = None
            notes.append(f"thumbnail of {rec.relpath} without contours: {exc.path}: {exc.reason}")
        images.append(figures.overlay_thumbnail(rgb, amap, mask, p["thumbnail_px"]))
        described.append({"id": m.image_id, "relpath": rec.relpath, "score": float(scores[index]),
                          "label": rec.label, "defect": rec.defect_type, "rank": rank})
    return images, described


def _figures(call: StageCall, group: ItemSet) -> ItemData:
    category, threshold = group.payload["category"], group.payload["threshold"]
    evaluated = ItemSet(f"category:{category}", group.members).item(call.refs["evaluation"].side)
    data = call.view("evaluation").read(evaluated)
    by_id = {m.image_id: m for m in group.members}
    kept = [by_id[i] for i in data.meta["members"]]
    scores, labels = data.arrays["scores"].astype(np.float64), data.arrays["labels"]
    kinds = [m.record.defect_type for m in kept]
    loco = call.refs["evaluation"].stage == "loco_evaluation"
    curves = data.meta.get("curves") or {}
    panels = (loco_panels(curves, scores, kinds) if loco
              else mvtec_panels(curves.get("pixel"), scores, labels))
    notes: list[str] = []
    curves_png = figures.panels_png(panels, category) if panels else np.zeros(0, np.uint8)
    histogram_png = figures.histogram_png(score_groups(labels, kinds, scores, loco), threshold,
                                          f"{category}: image scores")
    norm = tuple(data.meta["norm"]) if data.meta.get("norm") else None
    thumbs, described = _thumbnails(call, kept, scores, norm, notes)
    offsets = np.concatenate(([0], np.cumsum([t.size for t in thumbs]))).astype(np.int64)
    return ItemData({"curves": curves_png, "histogram": histogram_png,
                     "thumbnails": np.concatenate(thumbs) if thumbs else np.zeros(0, np.uint8),
                     "thumbnail_offsets": offsets},
                    {"thumbnails": described, "notes": notes})


@declare_stage("report_figures", 2, params=("top_n", "thumbnail_px", "map_items"),
               upstream=("evaluation", "maps"), produces="set", side_inputs=("mask",))
def report_figures(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each item: one category's curve panels, score histogram and top / bottom thumbnails (module docstring)."""
    return [_figures(call, w.payload) for w in batch]


@dataclass
class CategoryFigures:
    """One category's pictures for report.html: PNG / JPEG bytes and what each thumbnail shows."""

    curves: bytes | None                      # PNG of the curve panels; None when no curve is defined
    histogram: bytes                          # PNG
    thumbnails: list[tuple[dict, bytes]] = field(default_factory=list)   # ({id, relpath, score, ...}, JPEG)
    notes: list[str] = field(default_factory=list)


def _read(view, item: str) -> CategoryFigures:
    data = view.read(item)
    a = data.arrays
    offsets = a["thumbnail_offsets"]
    thumbs = [(described, a["thumbnails"][offsets[n]:offsets[n + 1]].tobytes())
              for n, described in enumerate(data.meta["thumbnails"])]
    return CategoryFigures(a["curves"].tobytes() or None, a["histogram"].tobytes(), thumbs, data.meta["notes"])


def category_figures(categories: list, thresholds: dict[str, float], thumbnail_px: int = THUMBNAIL_PX
                     ) -> tuple[dict[str, CategoryFigures], list[str]]:
    """Run ``report_figures`` for every category with a preview source (``CategoryResult.source``) and read its
    items. thresholds: {category: decision threshold} (marked on the histogram). Returns ({category: figures},
    notes about categories whose figures could not be made). The stage's statistics go into the run's."""
    groups: dict[tuple, list] = defaultdict(list)
    for cat in categories:
        if cat.source is not None:
            groups[(cat.source.evaluation, cat.source.maps, cat.source.previews)].append(cat)
    found: dict[str, CategoryFigures] = {}
    notes: list[str] = []
    for (evaluation, maps, top_n), cats in groups.items():
        source = cats[0].source
        sets = [figure_set(c.category, c.source.members, thresholds.get(c.category)) for c in cats]
        mapped = {k: v for c in cats for k, v in c.source.map_items.items()}
        result = report_figures(source.ctx, params={"top_n": top_n, "thumbnail_px": thumbnail_px,
                                                    "map_items": mapped},
                                upstream={"evaluation": evaluation, "maps": maps}, sets=sets)
        source.run.absorb(source.ctx, replace(result, failures={}))   # a figure failure fails no image
        view = source.ctx.store.open(result.ref)
        for cat, figure in zip(cats, sets):
            item = figure.item(result.ref.side)
            if view.has(item):
                found[cat.category] = _read(view, item)
            else:
                reason = next((r for r in result.failures.values() if figure.name in r), "see the run's log")
                notes.append(f"category {cat.category}: the report's figures could not be made: {reason}")
    return found, notes


def figures_for_report(report: dict, categories: list) -> dict[str, CategoryFigures]:
    """The figures of every category, drawn with the decision thresholds of ``report["decisions"]``; adds the
    stage's statistics to ``report["stages"]`` and a note per category without figures to ``report["notes"]``."""
    thresholds = (report.get("decisions") or {}).get("thresholds") or {}
    found, notes = category_figures(categories, thresholds)
    report["notes"].extend(notes)
    run = next((c.source.run for c in categories if c.source is not None), None)
    stats = next((s for s in run.stages if s.name == report_figures.name), None) if run is not None else None
    if stats is not None:
        entry = {"name": stats.name, "computed": stats.computed, "reused": stats.reused, "failed": stats.failed,
                 "seconds": round(stats.seconds, 3), **({"detail": stats.detail} if stats.detail else {})}
        report["stages"] = [s for s in report["stages"] if s["name"] != stats.name] + [entry]
    return found
