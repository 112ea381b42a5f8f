"""From scored region masks to an anomaly map, and from maps to normalised maps and image scores."""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the k largest scores (all when k is None or larger than N), as the official argsort."""
    order = np.argsort(scores, kind="stable")
    return order if k is None else order[-k:]


def fuse_masks(masks: np.ndarray, scores: np.ndarray, mode: str = "official") -> np.ndarray:
    """masks N x H x W bool, scores N -> H x W float32 anomaly map.

    official: sum_i m_i s_i / (1 + sum_i m_i)   (the weight map starts at ones, as the released code)
    mean:     sum_i m_i s_i / sum_i m_i where covered, 0 elsewhere   (paper Eq. 9)
    """
    weighted = np.zeros(masks.shape[1:], np.float32)
    count = np.zeros(masks.shape[1:], np.float32)
    for mask, score in zip(masks, np.asarray(scores, np.float32)):   # one mask at a time: memory O(H x W)
        weighted[mask] += score
        count += mask
    if mode == "official":
        return (weighted / (1.0 + count)).astype(np.float32)
    if mode == "mean":
        return np.divide(weighted, count, out=np.zeros_like(weighted), where=count > 0).astype(np.float32)
    raise ValueError(f"unknown fusion mode {mode!r}; use 'official' or 'mean'")


def resize_map(anomaly_map: np.ndarray, size: int | str) -> np.ndarray:
    """H x W float32 -> size x size float32, bilinear (cv2.resize, as the official evaluation); ``native``
    keeps H x W (the masks are at the image's own size)."""
    if size == "native":
        return anomaly_map.astype(np.float32, copy=False)
    import cv2   # here: evaluation imports this module, and a warm run's is cached

    return cv2.resize(anomaly_map.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def minmax_normalise(maps: np.ndarray) -> np.ndarray:
    """N x H x W -> the same scaled by the global min and max of the set (a constant set -> zeros)."""
    return scale_to_unit(maps, float(maps.min()), float(maps.max()))


def scale_to_unit(maps: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(maps - lo) / (hi - lo) as float32, any shape; zeros when hi <= lo. One map scaled with its category's
    (lo, hi) equals its slice of ``minmax_normalise`` of the whole category, bit for bit."""
    if hi <= lo:
        return np.zeros_like(maps, dtype=np.float32)
    return ((maps - lo) / (hi - lo)).astype(np.float32)


def image_scores(maps: np.ndarray) -> np.ndarray:
    """N x H x W -> N, the maximum of each map."""
    return maps.reshape(len(maps), -1).max(axis=1).astype(np.float32) if len(maps) else np.zeros(0, np.float32)
