"""The scenes of the synthetic MVTec LOCO data: parts, their footprints, and rendering to RGB + object labels.

``tasks.datasets.synth_loco`` plans the scenes (rule sets, logical and structural anomalies) and writes the files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Part:
    """One object of a scene. shape: disc | rect | tray | washer | nut | bolt; size: radius (disc, washer,
    nut) or length (bolt); box: (x0, y0, x1, y1) for rect and tray; texture: "", cereal, mix or divider."""

    object_id: int
    name: str
    shape: str
    cx: float = 0.0
    cy: float = 0.0
    size: float = 0.0
    angle: float = 0.0
    box: tuple = ()
    colour: tuple = (0, 0, 0)
    texture: str = ""
    texture_seed: int = 0


def _scale(w: int, h: int) -> float:
    return min(w / 1.25, h)


# ---------------------------------------------------------------- geometry and painting
def _poly(points, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(points) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def _circle(cx, cy, r, h, w) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _rotated(cx, cy, along, across, angle_deg, offset=0.0):
    """Corners of a rectangle ``along x across`` centred ``offset`` along its axis from (cx, cy)."""
    a = math.radians(angle_deg)
    u, v = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c = np.array([cx, cy]) + offset * u
    return [c + su * along / 2 * u + sv * across / 2 * v for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]


def footprint(part: Part, h: int, w: int) -> np.ndarray:
    """``H x W`` bool: every pixel the part covers (also where another part hides it)."""
    if part.shape in ("rect", "tray"):
        x0, y0, x1, y1 = (int(round(v)) for v in part.box)
        m = np.zeros((h, w), bool)
        m[max(0, y0):y1, max(0, x0):x1] = True
        return m
    if part.shape == "disc":
        return _circle(part.cx, part.cy, part.size, h, w)
    if part.shape == "washer":
        return _circle(part.cx, part.cy, part.size, h, w) & ~_circle(part.cx, part.cy, 0.42 * part.size, h, w)
    if part.shape == "nut":
        a = np.radians(part.angle + 60.0 * np.arange(6))
        hexagon = np.stack([part.cx + part.size * np.cos(a), part.cy + part.size * np.sin(a)], 1)
        return _poly(hexagon, h, w) & ~_circle(part.cx, part.cy, 0.4 * part.size, h, w)
    if part.shape == "bolt":
        t = max(3.0, 0.12 * part.size)
        shaft = _poly(_rotated(part.cx, part.cy, part.size, t, part.angle), h, w)
        head = _poly(_rotated(part.cx, part.cy, 1.4 * t, 2.4 * t, part.angle, offset=-part.size / 2), h, w)
        return shaft | head
    raise ValueError(f"unknown part shape {part.shape!r}")


def _paint(part: Part, canvas: np.ndarray) -> np.ndarray:
    """Paint the part onto the float H x W x 3 canvas; return its footprint."""
    h, w = canvas.shape[:2]
    m = footprint(part, h, w)
    colour = np.asarray(part.colour, float)
    if part.texture == "cereal":
        tex = cv2.GaussianBlur(np.random.default_rng(part.texture_seed).standard_normal((h, w)), (0, 0), 1.2)
        canvas[m] = colour * (1.0 + 0.35 * tex[m, None] / (np.abs(tex).max() + 1e-9))
    elif part.texture == "mix":
        speck = np.random.default_rng(part.texture_seed).random((h, w)) < 0.35
        canvas[m] = np.where(speck[m, None], np.clip(colour * 0.5 + 255 * 0.5, 0, 255), colour)
    else:
        canvas[m] = colour
    if part.texture == "divider":
        x = int(round((part.box[0] + part.box[2]) / 2))
        half = max(1, w // 160)
        canvas[int(part.box[1]):int(part.box[3]), x - half:x + half + 1] = colour * 0.55
    if part.shape == "disc":   # a highlight, so that fruit look round
        canvas[_circle(part.cx - 0.3 * part.size, part.cy - 0.3 * part.size, 0.3 * part.size, h, w) & m] = \
            np.clip(colour * 0.6 + 255 * 0.4, 0, 255)
    return m


def render(parts: list[Part], background: tuple, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parts painted in order on ``background`` plus ``noise`` (H x W x 1 float) -> (image H x W x 3 uint8,
    labels H x W uint8: the id of the part on top, 0 for background)."""
    h, w = noise.shape[:2]
    canvas = np.empty((h, w, 3), float)
    canvas[:] = np.asarray(background, float)
    labels = np.zeros((h, w), np.uint8)
    for part in parts:
        labels[_paint(part, canvas)] = part.object_id
    return np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8), labels
