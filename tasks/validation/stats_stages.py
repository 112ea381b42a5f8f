"""Cached statistics the validation suites read, so that a warm run validates without decoding anything.

Artifacts:
  image_statistics  per image (id with the mask's hash): mean 3 float32, std 3 float32 (per RGB channel of the
                    decoded H x W x 3 uint8 image), size 2 int32 (H, W upright)
                    meta: mode (the file's own PIL mode, before conversion), channels (its band count),
                    gt {present: bool, sizes: [[H, W], ...]} (the ground-truth mask's header size, or each channel
                    PNG's for an MVTec LOCO ground-truth folder; sizes [] when absent)
  map_statistics    per set (one map item: SAM-LAD keys maps by query and references): shape 2 int32 (H, W),
                    nonfinite int64 (NaN/inf values)   meta: min, max (over the finite values; None when none are)
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from stores import ItemData
from tasks.datasets.image_io import image_size
from tasks.datasets.records import ImageError, ImageRecord
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage


def file_mode(path: str) -> tuple[str, int]:
    """(PIL mode, band count) of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return img.mode, len(img.getbands())
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(path, f"cannot read the image header ({exc})") from None


def ground_truth_sizes(rec: ImageRecord) -> list[list[int]]:
    """[H, W] of the record's mask file, or of each PNG of its MVTec LOCO ground-truth folder; [] when absent."""
    path = rec.mask_path
    if not path:
        return []
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(".png"))
    else:
        files = [path] if os.path.isfile(path) else []
    return [list(image_size(f)) for f in files]


def pixel_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H x W x 3 uint8 -> (mean 3, std 3) float32 per channel (population std; OpenCV's single pass)."""
    import cv2   # here: a warm run reuses the statistics

    mean, std = cv2.meanStdDev(np.ascontiguousarray(rgb))
    return mean.reshape(3).astype(np.float32), std.reshape(3).astype(np.float32)


@declare_stage("image_statistics", 1, side_inputs=("mask",), reads_pixels=True)
def image_statistics(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Per image: channel means and stds of the decoded pixels, the file's mode, the ground truth's size."""
    out = []
    for w in batch:
        rgb = call.pixels(w.payload)
        mean, std = pixel_statistics(rgb)
        mode, channels = file_mode(w.payload.record.path)
        sizes = ground_truth_sizes(w.payload.record)
        out.append(ItemData({"mean": mean, "std": std, "size": np.array(rgb.shape[:2], np.int32)},
                            {"mode": mode, "channels": channels, "gt": {"present": bool(sizes), "sizes": sizes}}))
    return out


def map_summary(amap: np.ndarray) -> ItemData:
    """One anomaly map (H x W float) -> its shape, count of non-finite values, finite min and max."""
    finite = np.isfinite(amap)
    values = amap[finite]
    return ItemData({"shape": np.array(amap.shape, np.int32), "nonfinite": np.int64(amap.size - int(finite.sum()))},
                    {"min": float(values.min()) if values.size else None,
                     "max": float(values.max()) if values.size else None})


@declare_stage("map_statistics", 1, upstream=("maps",), produces="set")
def map_statistics(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Per map item (the set's payload names it): shape, non-finite count, finite range of the raw map."""
    maps = call.view("maps")
    return [map_summary(maps.read(w.payload.payload, ["map"]).arrays["map"]) for w in batch]
