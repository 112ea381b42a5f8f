"""Synthetic datasets in the exact MVTec LOCO AD layout, with logical and structural anomalies; deterministic.

``write_synthetic_loco(out, categories, train, validation, test, seed, size=(W, H))`` writes per category::

    <cat>/train/good/NNN.png, <cat>/validation/good/NNN.png
    <cat>/test/{good,logical_anomalies,structural_anomalies}/NNN.png       (``test`` images in each folder)
    <cat>/ground_truth/{logical,structural}_anomalies/NNN/000.png, 001.png  (one defect per PNG, official layout)
    <cat>/defects_config.json        (official format; both saturation kinds)
    <cat>/objects.json               (the rule's object count, ids and names)
    <cat>/anomaly_kinds.json         ({"test/<kind>/NNN.png": {"defects": [...], "objects": [...]}})
    <cat>/object_labels/<split>/<defect>/NNN.png   (0 background, i = object i; ``synth.object_labels_path``)

Categories alternate between two rule sets: ``synth_breakfast`` (a tray with a divider; left: two orange
discs and a peach disc in fixed slots; right: a cereal patch above a nut-mix patch) and ``synth_screws``
(two washers, two nuts, a long and a short bolt at free positions on a tray). Every normal image jitters
positions, sizes and shades. Object ids are fixed per rule (object k is the same part in every image); an
extra object gets id ``object_count + 1``.

Logical anomalies (each image one kind, cycling through ``LOGICAL_CYCLE``): ``missing_object`` (GT = where
it should be), ``extra_object`` (GT = the extra part), ``wrong_colour`` (GT = the recoloured part),
``misplaced_object`` (GT = its right place and its wrong place), and extra + wrong colour together (two
channels). Structural anomalies on one part (``STRUCTURAL_CYCLE``): ``scratch``, ``hole``, ``stain``, and a
scratch across a stain (two overlapping channels); their GT is the set of pixels they changed.
PNGs are written by Pillow without timestamps: same arguments, same bytes.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import cv2
import numpy as np

from tasks.datasets.generated import object_labels_path, prepare_generated_dir, save_png
from tasks.datasets.synth import _STAIN_COLOURS
from tasks.datasets.synth_loco_scene import Part, _circle, _scale, footprint, render

RULES = ("breakfast", "screws")
LOGICAL_CYCLE = (("extra_object", "wrong_colour"), ("missing_object",), ("extra_object",), ("wrong_colour",),
                 ("misplaced_object",))
STRUCTURAL_CYCLE = (("stain", "scratch"), ("scratch",), ("hole",), ("stain",))
STRUCTURAL_KINDS = ("scratch", "hole", "stain")
PIXEL_VALUES = {"missing_object": 255, "extra_object": 254, "wrong_colour": 253, "misplaced_object": 252,
                "scratch": 251, "hole": 250, "stain": 249}
_SPLIT_CODES = {"train": 0, "validation": 1, "good": 2, "logical_anomalies": 3, "structural_anomalies": 4}


def category_names(n: int) -> list[str]:
    """``synth_breakfast, synth_screws, synth_breakfast2, ...`` (n names)."""
    return [f"synth_{RULES[i % 2]}{'' if i < 2 else i // 2 + 1}" for i in range(n)]


def rule_objects(rule: str) -> list[str]:
    """Object names in id order (id = index + 1) of a rule."""
    if rule == "breakfast":
        return ["orange_1", "orange_2", "peach", "cereal", "nut_mix", "tray"]
    return ["washer_1", "washer_2", "nut_1", "nut_2", "bolt_long", "bolt_short", "tray"]


# ---------------------------------------------------------------- the two rule sets
def _shade(rng, colour) -> tuple:
    return tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(colour, rng.integers(-8, 9) + rng.integers(-3, 4, 3)))


_COLOURS = {"orange": (235, 130, 30), "peach": (232, 168, 118), "cereal": (214, 176, 108), "nut_mix": (160, 108, 62),
            "tray_breakfast": (92, 102, 118), "washer": (205, 205, 210), "nut": (150, 152, 162),
            "bolt": (188, 178, 150), "tray_screws": (38, 58, 92)}
_WRONG_COLOURS = {"orange": (95, 170, 60), "peach": (150, 60, 150), "washer": (196, 110, 60), "nut": (210, 170, 55),
                  "bolt": (60, 60, 64)}
BACKGROUND = (28, 28, 32)
_KINDS = {"orange_1": "orange", "orange_2": "orange", "extra_orange": "orange", "washer_1": "washer",
          "washer_2": "washer", "nut_1": "nut", "nut_2": "nut", "extra_nut": "nut", "bolt_long": "bolt",
          "bolt_short": "bolt"}


def _kind_of(name: str) -> str:
    """The colour family of a part name (``orange_2`` -> ``orange``; ``cereal`` -> ``cereal``)."""
    return _KINDS.get(name, name)


def _breakfast_plan(rng, w, h) -> list[Part]:
    s = _scale(w, h)

    def jit(v, span):
        return v + rng.uniform(-0.015, 0.015) * span

    tray = Part(6, "tray", "tray", box=(0.04 * w, 0.06 * h, 0.96 * w, 0.94 * h),
                colour=_shade(rng, _COLOURS["tray_breakfast"]), texture="divider")
    parts = [tray]
    for oid, name, fx, fy, fr in ((1, "orange_1", 0.17, 0.30, 0.12), (2, "orange_2", 0.17, 0.70, 0.12),
                                  (3, "peach", 0.38, 0.50, 0.11)):
        parts.append(Part(oid, name, "disc", jit(fx * w, w), jit(fy * h, h), fr * s * rng.uniform(0.95, 1.05),
                          colour=_shade(rng, _COLOURS[_kind_of(name)])))
    for oid, name, y0, y1, tex in ((4, "cereal", 0.12, 0.46, "cereal"), (5, "nut_mix", 0.54, 0.88, "mix")):
        box = (jit(0.56 * w, w), jit(y0 * h, h), jit(0.92 * w, w), jit(y1 * h, h))
        parts.append(Part(oid, name, "rect", box=box, colour=_shade(rng, _COLOURS[name]), texture=tex,
                          texture_seed=int(rng.integers(2 ** 31))))
    return parts


def _screw_template(oid: int, name: str, s: float, rng) -> Part:
    kind = _kind_of(name)
    if kind == "washer":
        return Part(oid, name, "washer", size=0.075 * s * rng.uniform(0.95, 1.05), colour=_shade(rng, _COLOURS[kind]))
    if kind == "nut":
        return Part(oid, name, "nut", size=0.07 * s * rng.uniform(0.95, 1.05), colour=_shade(rng, _COLOURS[kind]))
    length = (0.40 if name == "bolt_long" else 0.26) * s * rng.uniform(0.97, 1.03)
    return Part(oid, name, "bolt", size=length, colour=_shade(rng, _COLOURS["bolt"]))


def _reach(part: Part) -> float:
    return part.size / 2 + 1.4 * max(3.0, 0.12 * part.size) if part.shape == "bolt" else part.size


def _place_free(rng, part: Part, occupied: np.ndarray, region, gap: int = 3) -> Part:
    """``part`` at a random position and angle inside ``region`` (x0, y0, x1, y1), ``gap`` pixels clear of
    ``occupied``; ``RuntimeError`` after 400 failed draws."""
    h, w = occupied.shape
    grown = cv2.dilate(occupied.astype(np.uint8), np.ones((2 * gap + 1,) * 2, np.uint8)).astype(bool)
    r = _reach(part) + 1
    x0, y0, x1, y1 = region
    for _ in range(400):
        cand = replace(part, cx=float(rng.uniform(x0 + r, x1 - r)), cy=float(rng.uniform(y0 + r, y1 - r)),
                       angle=float(rng.uniform(0, 180)))
        if not (footprint(cand, h, w) & grown).any():
            return cand
    raise RuntimeError(f"no free place for {part.name} in the synthetic scene (image too small?)")


def _screws_region(w, h):   # the tray; everything outside it is "misplaced"
    return (0.16 * w, 0.08 * h, 0.84 * w, 0.92 * h)


def _screws_plan(rng, w, h) -> list[Part]:
    s = _scale(w, h)
    region = _screws_region(w, h)
    parts = [Part(7, "tray", "tray", box=region, colour=_shade(rng, _COLOURS["tray_screws"]))]
    occupied = np.zeros((h, w), bool)
    placed = {}
    for oid, name in ((5, "bolt_long"), (6, "bolt_short"), (1, "washer_1"), (2, "washer_2"), (3, "nut_1"),
                      (4, "nut_2")):   # the longest first, while there is room
        part = _place_free(rng, _screw_template(oid, name, s, rng), occupied, region)
        occupied |= footprint(part, h, w)
        placed[oid] = part
    return parts + [placed[k] for k in sorted(placed)]


# ---------------------------------------------------------------- logical anomalies
def _items(parts):
    return [p for p in parts if p.shape != "tray"]


def _extra_part(rule, rng, parts, w, h) -> Part:
    oid = len(rule_objects(rule)) + 1
    s = _scale(w, h)
    if rule == "breakfast":   # a third orange in a free slot of the left compartment
        fy = 0.20 if rng.random() < 0.5 else 0.80
        return Part(oid, "extra_orange", "disc", 0.37 * w, fy * h, 0.12 * s, colour=_shade(rng, _COLOURS["orange"]))
    occupied = np.any([footprint(p, h, w) for p in _items(parts)], axis=0)
    return _place_free(rng, _screw_template(oid, "extra_nut", s, rng), occupied, _screws_region(w, h))


def _misplaced_part(rule, rng, part: Part, parts, w, h) -> Part:
    if rule == "breakfast":   # a fruit lying on the cereal or the nut mix
        target_name = "cereal" if rng.random() < 0.5 else "nut_mix"
        target = next(p for p in parts if p.name == target_name)
        x0, y0, x1, y1 = target.box
        return replace(part, cx=(x0 + x1) / 2 + rng.uniform(-2, 2), cy=(y0 + y1) / 2 + rng.uniform(-2, 2))
    x0, _, x1, _ = _screws_region(w, h)   # a washer or nut outside the tray
    r = part.size + 1
    cx = rng.uniform(r, x0 - r) if rng.random() < 0.5 else rng.uniform(x1 + r, w - r)
    return replace(part, cx=float(cx), cy=float(rng.uniform(r, h - r)))


def _apply_logical(rule, kind, parts, rng, w, h, avoid):
    """-> (new parts, GT mask H x W bool, name of the object concerned)."""
    items = [p for p in _items(parts) if p.name not in avoid]
    if kind == "missing_object":
        part = items[int(rng.integers(len(items)))]
        return [p for p in parts if p is not part], footprint(part, h, w), part.name
    if kind == "extra_object":
        extra = _extra_part(rule, rng, parts, w, h)
        return parts + [extra], footprint(extra, h, w), extra.name
    movable = [p for p in items if p.shape in ("disc", "washer", "nut")]
    if kind == "wrong_colour":
        pool = [p for p in items if _kind_of(p.name) in _WRONG_COLOURS]
        part = pool[int(rng.integers(len(pool)))]
        new = replace(part, colour=_shade(rng, _WRONG_COLOURS[_kind_of(part.name)]))
        return [new if p is part else p for p in parts], footprint(new, h, w), part.name
    if kind == "misplaced_object":
        part = movable[int(rng.integers(len(movable)))]
        moved = _misplaced_part(rule, rng, part, parts, w, h)
        mask = footprint(part, h, w) | footprint(moved, h, w)
        return [p for p in parts if p is not part] + [moved], mask, part.name
    raise ValueError(f"unknown logical anomaly {kind!r}")


# ---------------------------------------------------------------- structural anomalies
def _plant_structural(kinds, image, labels, parts, rng):
    """Draw ``kinds`` on one part around one point -> (image, [mask H x W bool per kind], part name)."""
    h, w = labels.shape
    items = _items(parts)
    part = items[int(rng.integers(len(items)))]
    obj = labels == part.object_id
    core = cv2.erode(obj.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ys, xs = np.nonzero(core if core.any() else obj)
    k = int(rng.integers(len(ys)))
    cx, cy = float(xs[k]), float(ys[k])
    radius = max(4.0, math.sqrt(obj.sum() / math.pi))
    out, masks = image.copy(), []
    for kind in kinds:
        before = out.copy()
        m8 = np.zeros((h, w), np.uint8)
        if kind == "scratch":
            ang, half = rng.uniform(0, np.pi), 0.8 * radius
            p1 = (int(round(cx - half * math.cos(ang))), int(round(cy - half * math.sin(ang))))
            p2 = (int(round(cx + half * math.cos(ang))), int(round(cy + half * math.sin(ang))))
            cv2.line(m8, p1, p2, 1, max(2, h // 64), lineType=cv2.LINE_8)
            mask = m8.astype(bool) & obj
            lum = before[int(cy), int(cx)].astype(float) @ (0.299, 0.587, 0.114)
            out[mask] = 15 if lum > 128 else 240
        elif kind == "hole":
            mask = _circle(cx, cy, max(2.5, 0.3 * radius), h, w) & obj
            out[mask] = (12, 10, 10)
        elif kind == "stain":
            colour = max(_STAIN_COLOURS, key=lambda c: float(np.abs(np.subtract(c, before[int(cy), int(cx)])).sum()))
            blob = np.zeros((h, w), np.uint8)
            cv2.ellipse(blob, (int(round(cx)), int(round(cy))), (max(2, int(0.5 * radius)), max(2, int(0.35 * radius))),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
            soft = cv2.GaussianBlur(blob.astype(np.float64), (0, 0), max(1.0, 0.12 * radius))
            soft /= soft.max()
            mask = (soft > 0.2) & obj
            alpha = np.where(mask, 0.9 * soft, 0.0)[..., None]
            out = np.clip(np.rint(before * (1 - alpha) + np.asarray(colour, float) * alpha), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"unknown structural anomaly {kind!r}")
        masks.append(mask)
    union = np.any(masks, axis=0)
    same = union & ~np.any(out != image, axis=2)
    out[same] = 255 - image[same]   # every GT pixel differs from the clean image
    return out, masks, part.name


# ---------------------------------------------------------------- samples and the writer
def render_loco_sample(rule: str, kinds: tuple = (), *, seed: int = 0, category_index: int = 0, folder: str = "good",
                       index: int = 0, size: tuple[int, int] = (160, 128)):
    """One sample -> (image H x W x 3 uint8, labels H x W uint8, [(kind, mask H x W bool)], [object names]).

    rule: breakfast | screws; kinds: () for a normal image, or anomaly kinds of one folder (see the cycles);
    folder: train | validation | good | logical_anomalies | structural_anomalies (selects the random stream).
    """
    w, h = size
    rng = np.random.default_rng([seed, category_index, _SPLIT_CODES[folder], index])
    parts = (_breakfast_plan if rule == "breakfast" else _screws_plan)(rng, w, h)
    noise = rng.normal(0, 2.5, (h, w, 1))
    channels, names = [], []
    if kinds and kinds[0] not in STRUCTURAL_KINDS:
        for kind in kinds:
            parts, mask, name = _apply_logical(rule, kind, parts, rng, w, h, avoid=names)
            channels.append((kind, mask))
            names.append(name)
        image, labels = render(parts, BACKGROUND, noise)
        return image, labels, channels, names
    image, labels = render(parts, BACKGROUND, noise)
    if kinds:
        image, masks, name = _plant_structural(kinds, image, labels, parts, rng)
        channels, names = list(zip(kinds, masks)), [name]
    return image, labels, channels, names


def defects_config(rule: str, size: tuple[int, int]) -> list[dict]:
    """The category's ``defects_config.json`` entries: relative and absolute saturation both appear.

    missing_object: absolute, 80 % of the smallest part's nominal area (peach disc, nut); hole: absolute,
    S^2 / 1000 pixels (S = min(W / 1.25, H)); misplaced_object: relative 0.5 (GT covers the right and the
    wrong place); the rest relative 1.0.
    """
    s = _scale(*size)
    if rule == "breakfast":   # the peach disc
        smallest = math.pi * (0.11 * s) ** 2
    else:                     # a nut: hexagon minus its hole
        smallest = (1.5 * math.sqrt(3) - math.pi * 0.16) * (0.07 * s) ** 2
    absolute = {"missing_object": max(1, int(0.8 * smallest)), "hole": max(1, int(s * s / 1000))}
    relative = {"misplaced_object": 0.5}
    return [{"defect_name": name, "pixel_value": value,
             "saturation_threshold": absolute.get(name, relative.get(name, 1.0)),
             "relative_saturation": name not in absolute} for name, value in PIXEL_VALUES.items()]


def _write_json(obj, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")


def write_synthetic_loco(out: str, categories: int = 2, train: int = 8, validation: int = 2, test: int = 8,
                         seed: int = 0, size: tuple[int, int] = (160, 128)) -> list[str]:
    """Write a synthetic MVTec-LOCO-layout dataset under ``out``; return the category names.

    train / validation: normal images per category; test: images in EACH of test/good,
    test/logical_anomalies and test/structural_anomalies (at least 5, so that every anomaly kind and both
    two-defect images appear); size: (W, H), at least 64 x 48. A category folder from an earlier run is
    replaced; any other non-empty folder of the same name raises ``FileExistsError``.
    """
    w, h = (int(v) for v in size)
    if categories < 1 or train < 1 or validation < 1:
        raise ValueError("categories, train and validation must be at least 1")
    if test < len(LOGICAL_CYCLE):
        raise ValueError(f"test must be at least {len(LOGICAL_CYCLE)} to hold every anomaly kind")
    if w < 64 or h < 48:
        raise ValueError("size must be at least 64 x 48 pixels (W x H)")
    names = category_names(categories)
    for ci, name in enumerate(names):
        rule = RULES[ci % 2]
        cat_dir = os.path.join(out, name)
        prepare_generated_dir(cat_dir, "tasks.datasets.synth_loco.write_synthetic_loco")
        _write_json(defects_config(rule, (w, h)), os.path.join(cat_dir, "defects_config.json"))
        objects = rule_objects(rule)
        _write_json({"rule": rule, "object_count": len(objects), "extra_object_id": len(objects) + 1,
                     "objects": [{"id": i + 1, "name": n} for i, n in enumerate(objects)]},
                    os.path.join(cat_dir, "objects.json"))
        manifest = {}
        for split, folder, count, cycle in (
                ("train", "good", train, ()), ("validation", "good", validation, ()), ("test", "good", test, ()),
                ("test", "logical_anomalies", test, LOGICAL_CYCLE),
                ("test", "structural_anomalies", test, STRUCTURAL_CYCLE)):
            for n in range(count):
                kinds = cycle[n % len(cycle)] if cycle else ()
                image, labels, channels, objs = render_loco_sample(
                    rule, kinds, seed=seed, category_index=ci, folder=folder if split == "test" else split, index=n,
                    size=(w, h))
                rel = f"{name}/{split}/{folder}/{n:03d}.png"
                save_png(image, os.path.join(out, rel))
                save_png(labels, os.path.join(out, object_labels_path(rel)))
                for c, (kind, mask) in enumerate(channels):
                    save_png(np.where(mask, PIXEL_VALUES[kind], 0).astype(np.uint8),
                             os.path.join(cat_dir, "ground_truth", folder, f"{n:03d}", f"{c:03d}.png"))
                if kinds:
                    manifest[rel.split("/", 1)[1]] = {"defects": list(kinds), "objects": objs}
        _write_json(manifest, os.path.join(cat_dir, "anomaly_kinds.json"))
    return names
