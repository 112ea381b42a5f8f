"""Region candidates: filter raw GroundingDINO queries into boxes, or take them from ground truth (oracle)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tasks.models.captions import normalize_caption


@dataclass(frozen=True)
class BoxFilter:
    """box_threshold: keep a query whose best token score exceeds it; text_threshold: tokens that name
    the phrase; max_area / min_area: bounds on the normalised box area w*h; filter_word: drop a box whose
    phrase contains it ("" = keep all); max_boxes: keep only the best N of a caption (None = all)."""

    box_threshold: float = 0.1
    text_threshold: float = 0.1
    max_area: float = 1.0
    min_area: float = 0.0
    filter_word: str = ""
    max_boxes: int | None = None


def defect_box_params(rule: BoxFilter, captions: list[str], filter_word: str | list[str],
                      area_threshold: float | None = None) -> dict:
    """The ``defect_boxes`` stage parameters: the rule, [normalised caption, filter word] pairs, θ (or None).

    filter_word: one word for every caption, or one per caption."""
    words = [filter_word] * len(captions) if isinstance(filter_word, str) else list(filter_word)
    return {"rule": dict(rule.__dict__), "captions": [[normalize_caption(c), w] for c, w in zip(captions, words)],
            "area_threshold": area_threshold}


def cxcywh_to_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """N x 4 normalised (cx, cy, w, h) -> N x 4 pixel (x0, y0, x1, y1), float32."""
    cx, cy, w, h = (boxes[:, i] for i in range(4))
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return (xyxy * np.array([width, height, width, height], dtype=np.float32)).astype(np.float32)


def filter_queries(boxes_cxcywh: np.ndarray, token_logits: np.ndarray, token_ids: np.ndarray,
                   image_hw: tuple[int, int], rule: BoxFilter,
                   phrase_fn: Callable[[np.ndarray, np.ndarray], str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Keep the queries of one caption that pass the rule.

    boxes_cxcywh: Q x 4 normalised; token_logits: Q x T sigmoid scores; token_ids: T.
    Returns boxes N x 4 xyxy pixels, scores N (max token score), phrases N.
    """
    scores = token_logits.max(axis=1) if token_logits.size else np.zeros(len(boxes_cxcywh), np.float32)
    area = boxes_cxcywh[:, 2] * boxes_cxcywh[:, 3]
    keep = (scores > rule.box_threshold) & (area < rule.max_area) & (area > rule.min_area)
    idx = np.flatnonzero(keep)
    phrases = [phrase_fn(token_ids, token_logits[i] > rule.text_threshold) if phrase_fn else "" for i in idx]
    if rule.filter_word:
        word = rule.filter_word.lower()
        kept = [k for k, p in enumerate(phrases) if word not in p.lower()]
        idx, phrases = idx[kept], [phrases[k] for k in kept]
    if rule.max_boxes is not None and len(idx) > rule.max_boxes:
        best = np.sort(np.argsort(-scores[idx], kind="stable")[:rule.max_boxes])
        idx, phrases = idx[best], [phrases[k] for k in best]
    boxes = cxcywh_to_xyxy(boxes_cxcywh[idx], *image_hw)
    return boxes, scores[idx].astype(np.float32), phrases


def pool_captions(per_caption: Sequence[tuple[np.ndarray, np.ndarray, list[str]]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Concatenate every caption's boxes (no NMS, as the official code).

    Returns boxes N x 4, scores N, caption index N (int32), phrases N.
    """
    boxes = [b for b, _, _ in per_caption]
    scores = [s for _, s, _ in per_caption]
    which = [np.full(len(s), i, np.int32) for i, (_, s, _) in enumerate(per_caption)]
    phrases = [p for _, _, ps in per_caption for p in ps]
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), []
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
            np.concatenate(which), phrases)


def oracle_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth as a region generator: one box per 8-connected component, score 1.

    mask: H x W bool. Returns boxes N x 4 xyxy pixels with exclusive max corner, scores N.
    """
    from scipy import ndimage   # imported when needed: a warm run never labels components
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = []
    for sl in ndimage.find_objects(labels):
        ys, xs = sl
        boxes.append([xs.start, ys.start, xs.stop, ys.stop])
    boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes_arr, np.ones(n, np.float32)


def smaller_than(boxes: np.ndarray, image_hw: tuple[int, int], max_area: float) -> np.ndarray:
    """Bool N: normalised area w*h of each xyxy pixel box < max_area (the rule ``filter_queries`` applies)."""
    h, w = image_hw
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(h * w) < max_area


def box_masks(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Oracle refiner: each box filled. boxes N x 4 xyxy (exclusive max) -> N x H x W bool."""
    h, w = image_hw
    masks = np.zeros((len(boxes), h, w), bool)
    for i, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
        masks[i, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
    return masks
