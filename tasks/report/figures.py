"""The report's pictures as bytes: curve panels and score histograms (PNG, matplotlib Agg), and overlay thumbnails
(JPEG: the image, its anomaly map as a heat overlay, the ground-truth contours). Pure functions, no store, no I/O.

matplotlib is imported inside the plotting functions: a warm run reads the cached bytes and never imports it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from tasks.metrics_stream import CurveSampler

DPI = 72
CONTOUR_RGB = (0, 255, 0)
HISTOGRAM_COLOURS = {"good": "#2c7fb8", "anomalous": "#d95f0e", "unlabelled": "#777777", "logical": "#d95f0e",
                     "structural": "#7b3294"}


@dataclass(frozen=True)
class Line:
    """One curve of a panel: x, y K floats (drawn in order)."""

    label: str
    x: list[float]
    y: list[float]


@dataclass(frozen=True)
class Panel:
    """One plot: title, axis labels, x range [0, xmax], lines."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    xmax: float = 1.0
    diagonal: bool = False   # the chance line of a ROC plot


def thin(curve: dict[str, list[float]], buckets: dict[str, int] | None = None) -> dict[str, list[float]]:
    """A curve's points (columns of K floats, monotone in the bucketed columns) cut to a few hundred.

    buckets: the monotone columns and how finely to keep them (default: fpr and tpr, 200 each)."""
    sampler = CurveSampler(buckets or {"fpr": 200, "tpr": 200})
    sampler.add({k: np.asarray(v, np.float64) for k, v in curve.items()})
    return sampler.points()


def roc_line(label: str, curve: dict[str, list[float]]) -> Line:
    """ROC from {"fpr", "tpr"} points (thresholds descending); starts at the origin."""
    return Line(label, [0.0, *curve["fpr"]], [0.0, *curve["tpr"]])


def pr_line(label: str, curve: dict[str, list[float]]) -> Line:
    """Precision against recall from {"tpr", "precision"} points; starts at (0, first precision)."""
    precision = curve["precision"]
    return Line(label, [0.0, *curve["tpr"]], [precision[0] if precision else 1.0, *precision])


def limited_line(label: str, fpr: list[float], y: list[float], limit: float) -> Line:
    """The part of a curve (fpr ascending) with fpr <= limit, interpolated at the limit."""
    x, yy = np.asarray(fpr, np.float64), np.asarray(y, np.float64)
    k = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:k].tolist(), yy[:k].tolist()
    if k < x.size and k > 0 and xs[-1] < limit:
        ys.append(float(np.interp(limit, x[k - 1:k + 1], yy[k - 1:k + 1])))
        xs.append(limit)
    return Line(label, [0.0, *xs], [0.0, *ys])


def _png(fig) -> np.ndarray:
    """A matplotlib Figure -> PNG bytes as a uint8 array (what the store keeps)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return np.frombuffer(buf.getvalue(), np.uint8).copy()


def panels_png(panels: list[Panel], title: str) -> np.ndarray:
    """One row of panels -> PNG bytes (uint8 array). Panels without lines say that the curve is undefined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(panels), 3.2), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=11)
    for ax, panel in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.set_xlim(0, panel.xmax)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if panel.diagonal:
            ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        for line in panel.lines:
            ax.plot(line.x, line.y, lw=1.4, label=line.label)
        if panel.lines:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "undefined\n(needs good and anomalous)", ha="center", va="center", fontsize=9,
                    color="#777777", transform=ax.transAxes)
    return _png(fig)


def histogram_png(groups: dict[str, np.ndarray], threshold: float | None, title: str,
                  bins: int = 30) -> np.ndarray:
    """Score histograms (groups: {"good" | "anomalous" | "unlabelled": N floats}) on shared bins, with the
    decision threshold as a vertical line when there is one -> PNG bytes (uint8 array)."""
    from matplotlib.figure import Figure

    values = [np.asarray(v, np.float64) for v in groups.values() if len(v)]
    pooled = np.concatenate(values) if values else np.zeros(1)
    lo, hi = float(pooled.min()), float(pooled.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(4.6, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for name, scores in groups.items():
        if len(scores):
            ax.hist(scores, bins=edges, alpha=0.55, label=f"{name} ({len(scores)})",
                    color=HISTOGRAM_COLOURS.get(name))
    if threshold is not None:
        ax.axvline(threshold, color="#c00000", lw=1.6, ls="--", label=f"threshold {threshold:.4g}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("image score", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    return _png(fig)


def overlay_thumbnail(rgb: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, size: int,
                      quality: int = 75) -> np.ndarray:
    """A JPEG thumbnail (uint8 array of its bytes) no larger than size x size (never enlarged).

    rgb: H x W x 3 uint8; anomaly_map: h x w float in [0, 1] (any size; resized to the thumbnail); mask: H x W
    bool ground truth or None. The map is blended in as a JET heat map, the mask's outer contours drawn on top.
    """
    import cv2   # here: a warm run's figures are cached, and cv2's import costs 0.05 s

    h, w = rgb.shape[:2]
    scale = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    heat_level = np.clip(cv2.resize(np.asarray(anomaly_map, np.float32), (tw, th)), 0, 1)
    heat = cv2.applyColorMap((heat_level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.55 * small + 0.45 * heat).astype(np.uint8)
    if mask is not None and mask.any():
        small_mask = cv2.resize(mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        blended = np.ascontiguousarray(blended)
        cv2.drawContours(blended, contours, -1, CONTOUR_RGB, 1)
    ok, encoded = cv2.imencode(".jpg", blended[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode a {tw}x{th} thumbnail as JPEG")
    return encoded.reshape(-1)
