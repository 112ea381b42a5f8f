"""Synthetic datasets in the exact MVTec AD layout, deterministic for a seed.

``write_synthetic_mvtec(out_dir, categories, images, seed, size)`` writes::

    <out>/<cat>/train/good/NNN.png                     (``images`` normal images)
    <out>/<cat>/test/good/NNN.png                      (about a third of ``images``)
    <out>/<cat>/test/<defect>/NNN.png                  (the rest, spread over DEFECTS)
    <out>/<cat>/ground_truth/<defect>/NNN_mask.png     (0/255, L mode)

Categories cycle through ``synth_texture`` (weave / stripes / noise texture),
``synth_object`` (one roundish object on a plain background) and ``synth_multi`` (3-4
similar objects), then ``synth_texture2`` ... Defects: ``scratch`` (thin bright or dark
line), ``hole`` (dark filled disc), ``stain`` (blurred colour blob), ``missing_piece``
(a chunk of an object replaced by background; a flat-colour patch on textures). The GT mask
is exactly the set of pixels the defect changed: non-empty and away from the borders.
Images are ``size x size x 3`` uint8 RGB; PNGs are written by Pillow (no timestamps), so the
same arguments give the same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from tasks.datasets.generated import (MARKER, OBJECT_LABELS, object_labels_path,  # noqa: F401 (re-exported)
                                      prepare_generated_dir, save_png)

KINDS = ("texture", "object", "multi")
DEFECTS = ("scratch", "hole", "stain", "missing_piece")
_STAIN_COLOURS = ((150, 85, 20), (30, 90, 180), (160, 30, 130), (50, 150, 40))


@dataclass(frozen=True)
class _Style:
    kind: str
    variant: int
    base: tuple[int, int, int]  # texture colour 0, or plain background
    fg: tuple[int, int, int]  # texture colour 1, or object colour
    aspect: float  # object ellipse ratio minor / major


def category_names(n: int) -> list[str]:
    """``synth_texture, synth_object, synth_multi, synth_texture2, ...`` (n names)."""
    return [f"synth_{KINDS[i % 3]}{'' if i < 3 else i // 3 + 1}" for i in range(n)]


def _lum(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _make_style(seed: int, category_index: int) -> _Style:
    rng = np.random.default_rng([seed, category_index, 7])
    kind, variant = KINDS[category_index % 3], category_index // 3
    if kind == "texture":
        base = tuple(int(v) for v in rng.integers(100, 170, 3))
        fg = tuple(int(np.clip(v + s, 0, 255)) for v, s in zip(base, rng.choice([-55, 55], 3)))
    else:
        base = tuple(int(v) for v in rng.integers(30, 60, 3))  # dark plain background
        while True:
            fg = tuple(int(v) for v in rng.integers(90, 230, 3))
            if _lum(fg) - _lum(base) >= 70:
                break
    return _Style(kind, variant, base, fg, float(rng.uniform(0.85, 1.0)))


def _ellipse_mask(size: int, center, axes, angle: float) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (int(round(center[0])), int(round(center[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))), angle, 0, 360, 1, -1)
    return m.astype(bool)


def _render_normal(style: _Style, rng: np.random.Generator, size: int):
    """-> (image HxWx3 uint8, background HxWx3 uint8, objects: list of (cx, cy, r, mask HxW bool))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    base, fg = np.array(style.base, float), np.array(style.fg, float)
    if style.kind == "texture":
        period = size / 12.0
        phase = rng.uniform(0, 2 * np.pi, 2)
        pattern = style.variant % 3
        if pattern == 0:  # weave: alternating cells of horizontal / vertical threads
            cell = (((xx + phase[0]) // (2 * period)) + ((yy + phase[1]) // (2 * period))) % 2
            v = np.where(cell == 0, np.sin(2 * np.pi * xx / period + phase[0]),
                         np.sin(2 * np.pi * yy / period + phase[1]))
        elif pattern == 1:  # diagonal stripes
            v = np.sin(2 * np.pi * (xx + yy) / (1.4 * period) + phase[0])
        else:  # smooth noise
            v = cv2.GaussianBlur(rng.standard_normal((size, size)), (0, 0), size / 40.0)
            v = v / (np.abs(v).max() + 1e-9)
        t = (v[..., None] + 1.0) / 2.0
        img = base * (1 - t) + fg * t + rng.normal(0, 4, (size, size, 1))
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return img, img.copy(), [(size / 2, size / 2, size * 0.3, np.ones((size, size), bool))]
    background = base + rng.normal(0, 3, (size, size, 1))
    background = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    img = background.copy()
    highlight = np.clip(fg * 0.6 + 255 * 0.4, 0, 255).astype(np.uint8)
    if style.kind == "object":
        centers = [(size / 2 + rng.uniform(-0.04, 0.04) * size, size / 2 + rng.uniform(-0.04, 0.04) * size)]
        radius = size * 0.3
    else:
        n = int(rng.integers(3, 5))
        cells = rng.permutation(4)[:n]
        centers = [((0.27 + 0.46 * (c % 2) + rng.uniform(-0.03, 0.03)) * size,
                    (0.27 + 0.46 * (c // 2) + rng.uniform(-0.03, 0.03)) * size) for c in sorted(cells)]
        radius = size * 0.15
    objects = []
    for cx, cy in centers:
        r = radius * rng.uniform(0.95, 1.05)
        m = _ellipse_mask(size, (cx, cy), (r, r * style.aspect), float(rng.uniform(0, 180)))
        img[m] = np.asarray(style.fg, np.uint8)
        img[_ellipse_mask(size, (cx, cy), (0.3 * r, 0.3 * r), 0.0)] = highlight
        objects.append((cx, cy, r, m))
    shade = rng.normal(0, 3, (size, size, 1))
    img = np.where(np.any(img != background, axis=2)[..., None],
                   np.clip(np.rint(img + shade), 0, 255), img).astype(np.uint8)
    return img, background, objects


def _plant(defect: str, img: np.ndarray, background: np.ndarray, objects, style: _Style,
           rng: np.random.Generator):
    """Draw one defect; -> (image HxWx3 uint8, mask HxW bool) with mask == changed pixels."""
    size = img.shape[0]
    out = img.copy()
    cx, cy, r, obj = objects[int(rng.integers(len(objects)))]
    if style.kind == "texture":  # anywhere away from the borders
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        r = size * 0.2
    else:
        ang = rng.uniform(0, 2 * np.pi)
        cx, cy = cx + 0.15 * r * np.cos(ang), cy + 0.15 * r * np.sin(ang)
    local = float(_lum(img[int(cy), int(cx)]))
    m8 = np.zeros((size, size), np.uint8)
    if defect == "scratch":
        ang = rng.uniform(0, np.pi)
        half = 0.6 * r
        p1 = (int(round(cx - half * np.cos(ang))), int(round(cy - half * np.sin(ang))))
        p2 = (int(round(cx + half * np.cos(ang))), int(round(cy + half * np.sin(ang))))
        cv2.line(m8, p1, p2, 1, max(2, size // 64), lineType=cv2.LINE_8)
        mask = m8.astype(bool)
        out[mask] = 15 if local > 128 else 240
    elif defect == "hole":
        mask = _ellipse_mask(size, (cx, cy), (max(3.0, 0.28 * r),) * 2, 0.0)
        out[mask] = (12, 10, 10)
    elif defect == "stain":
        colour = max(_STAIN_COLOURS, key=lambda c: float(np.abs(np.subtract(c, img[int(cy), int(cx)])).sum()))
        blob = _ellipse_mask(size, (cx, cy), (0.4 * r, 0.28 * r), float(rng.uniform(0, 180)))
        soft = cv2.GaussianBlur(blob.astype(np.float64), (0, 0), max(1.0, 0.12 * r))
        soft /= soft.max()
        mask = soft > 0.2
        alpha = np.where(mask, 0.9 * soft, 0.0)[..., None]
        out = np.clip(np.rint(img * (1 - alpha) + np.asarray(colour, float) * alpha), 0, 255).astype(np.uint8)
    elif defect == "missing_piece":
        if style.kind == "texture":
            half = int(size * 0.09)
            x0, y0 = int(cx) - half, int(cy) - half
            m8[y0:y0 + 2 * half, x0:x0 + 2 * half] = 1
            mask = m8.astype(bool)
            out[mask] = np.clip(np.asarray(style.base, float) * 0.55, 0, 255).astype(np.uint8)
        else:
            ocx, ocy = objects[0][0], objects[0][1]
            for o in objects:  # the object the defect point belongs to
                if o[3][int(cy), int(cx)]:
                    ocx, ocy, r, obj = o
            ang = rng.uniform(0, 2 * np.pi)
            edge = (ocx + r * np.cos(ang), ocy + r * np.sin(ang))
            mask = _ellipse_mask(size, edge, (0.45 * r, 0.45 * r), 0.0) & obj
            out[mask] = background[mask]
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECTS)}")
    same = mask & ~np.any(out != img, axis=2)
    out[same] = 255 - img[same]  # guarantee every mask pixel differs from the clean image
    mask = np.any(out != img, axis=2)
    return out, mask


def render_sample(category_index: int, defect: str | None = None, *, seed: int = 0,
                  sample_index: int = 0, split: str = "test", size: int = 128):
    """One synthetic sample -> (clean HxWx3 uint8, image HxWx3 uint8, mask HxW bool).

    category_index picks the kind (``KINDS[i % 3]``) and the category's colours; defect None
    gives a normal image (image == clean, empty mask).
    """
    clean, image, mask, _ = render_sample_with_objects(category_index, defect, seed=seed, sample_index=sample_index,
                                                       split=split, size=size)
    return clean, image, mask


def render_sample_with_objects(category_index: int, defect: str | None = None, *, seed: int = 0,
                               sample_index: int = 0, split: str = "test", size: int = 128):
    """:func:`render_sample` plus the object labels HxW uint8 (0 = background, i = object i; a texture is one
    object covering the image), the ground truth for oracle object masks."""
    style = _make_style(seed, category_index)
    code = 0 if defect is None else 1 + DEFECTS.index(defect)
    rng = np.random.default_rng([seed, category_index, 0 if split == "train" else 1, code, sample_index])
    clean, background, objects = _render_normal(style, rng, size)
    labels = np.zeros((size, size), np.uint8)
    for i, (_, _, _, object_mask) in enumerate(objects, start=1):
        labels[object_mask & (labels == 0)] = i
    if defect is None:
        return clean, clean.copy(), np.zeros((size, size), bool), labels
    image, mask = _plant(defect, clean, background, objects, style, rng)
    return clean, image, mask, labels


def write_synthetic_mvtec(out_dir: str, categories: int = 3, images: int = 8, seed: int = 0,
                          size: int = 128) -> list[str]:
    """Write a synthetic MVTec-AD-layout dataset under ``out_dir``; return the category names.

    images: test images per category (max(1, images // 3) good, the rest cycle through
    DEFECTS); train/good also gets ``images`` normal images. size: image side in pixels.
    Each test image's object labels go to ``object_labels_path(relpath)`` (for oracle object masks).
    A category folder from an earlier run is replaced; any other existing non-empty folder
    of the same name raises ``FileExistsError``.
    """
    if categories < 1 or images < 1:
        raise ValueError("categories and images must be at least 1")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    names = category_names(categories)
    n_good = max(1, images // 3) if images >= 2 else images
    for ci, name in enumerate(names):
        cat_dir = os.path.join(out_dir, name)
        prepare_generated_dir(cat_dir, "tasks.datasets.synth.write_synthetic_mvtec")
        for i in range(images):
            _, img, _ = render_sample(ci, None, seed=seed, sample_index=i, split="train", size=size)
            save_png(img, os.path.join(cat_dir, "train", "good", f"{i:03d}.png"))
        for i in range(n_good):
            _, img, _, labels = render_sample_with_objects(ci, None, seed=seed, sample_index=i, size=size)
            save_png(img, os.path.join(cat_dir, "test", "good", f"{i:03d}.png"))
            save_png(labels, os.path.join(out_dir, object_labels_path(f"{name}/test/good/{i:03d}.png")))
        counts = dict.fromkeys(DEFECTS, 0)
        for j in range(images - n_good):
            defect = DEFECTS[j % len(DEFECTS)]
            k = counts[defect]
            counts[defect] += 1
            _, img, mask, labels = render_sample_with_objects(ci, defect, seed=seed, sample_index=k, size=size)
            save_png(img, os.path.join(cat_dir, "test", defect, f"{k:03d}.png"))
            save_png(mask.astype(np.uint8) * 255, os.path.join(cat_dir, "ground_truth", defect, f"{k:03d}_mask.png"))
            save_png(labels, os.path.join(out_dir, object_labels_path(f"{name}/test/{defect}/{k:03d}.png")))
    return names
