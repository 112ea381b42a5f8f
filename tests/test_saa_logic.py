"""SAA's pure logic, checked exactly: query filtering, pooling, oracle regions, fusion, normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.saa import fusion, regions
from tasks.saa.regions import BoxFilter


def _queries():
    boxes = np.array([[0.5, 0.5, 0.2, 0.2],    # small, confident
                      [0.5, 0.5, 0.9, 0.9],    # confident but area 0.81
                      [0.25, 0.25, 0.1, 0.1],  # below box threshold
                      [0.75, 0.25, 0.1, 0.2]], np.float32)
    logits = np.array([[0.1, 0.8, 0.2], [0.1, 0.6, 0.5], [0.05, 0.09, 0.1], [0.3, 0.2, 0.4]], np.float32)
    return boxes, logits, np.array([101, 7, 102])


def test_filter_by_score_and_area_converts_to_pixels():
    boxes, logits, ids = _queries()
    out, scores, _ = regions.filter_queries(boxes, logits, ids, (100, 200), BoxFilter(0.1, 0.1, max_area=0.5))
    np.testing.assert_allclose(scores, [0.8, 0.4])
    np.testing.assert_allclose(out, [[80, 40, 120, 60], [140, 15, 160, 35]])


def test_filter_word_and_max_boxes():
    boxes, logits, ids = _queries()
    phrase = lambda tok, sel: "carpet" if sel[1] else "hole"  # noqa: E731
    _, scores, phrases = regions.filter_queries(boxes, logits, ids, (10, 10), BoxFilter(0.1, 0.5, 1.0, 0.0, "carpet"),
                                                phrase)
    assert phrases == ["hole"] and scores.tolist() == pytest.approx([0.4])
    _, scores, phrases = regions.filter_queries(boxes, logits, ids, (10, 10), BoxFilter(0.1, 0.7, 1.0, 0.0, "carpet"),
                                                phrase)   # a higher text threshold names query 1 "hole" too
    assert phrases == ["hole", "hole"] and scores.tolist() == pytest.approx([0.6, 0.4])
    _, scores, _ = regions.filter_queries(boxes, logits, ids, (10, 10), BoxFilter(0.1, 0.1, 1.0, max_boxes=2))
    assert scores.tolist() == pytest.approx([0.8, 0.6])   # the two best, in query order


def test_pool_captions_concatenates_and_handles_nothing():
    a = (np.ones((2, 4), np.float32), np.array([0.5, 0.7], np.float32), ["x", "y"])
    b = (np.zeros((1, 4), np.float32), np.array([0.2], np.float32), ["z"])
    boxes, scores, which, phrases = regions.pool_captions([a, b])
    assert boxes.shape == (3, 4) and which.tolist() == [0, 0, 1] and phrases == ["x", "y", "z"]
    boxes, scores, which, phrases = regions.pool_captions([])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and phrases == []


def test_oracle_boxes_use_8_connectivity_and_exclusive_corners():
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = mask[2, 2] = True          # diagonal neighbours: one component
    mask[5:8, 4:9] = True
    boxes, scores = regions.oracle_boxes(mask)
    assert boxes.tolist() == [[1, 1, 3, 3], [4, 5, 9, 8]] and scores.tolist() == [1, 1]
    filled = regions.box_masks(boxes, (10, 10))
    assert filled[1].sum() == 15 and filled[0][1:3, 1:3].all() and filled.sum() == 19
    assert regions.oracle_boxes(np.zeros((4, 4), bool))[0].shape == (0, 4)


def test_fusion_official_and_mean_on_overlaps():
    masks = np.zeros((2, 1, 4), bool)
    masks[0, 0, :3] = True
    masks[1, 0, 1:] = True
    scores = np.array([0.6, 0.3], np.float32)
    np.testing.assert_allclose(fusion.fuse_masks(masks, scores, "official")[0], [0.3, 0.3, 0.3, 0.15])
    np.testing.assert_allclose(fusion.fuse_masks(masks, scores, "mean")[0], [0.6, 0.45, 0.45, 0.3])
    empty = np.zeros((1, 1, 4), bool)
    assert fusion.fuse_masks(empty, np.zeros(1, np.float32), "mean").sum() == 0
    with pytest.raises(ValueError, match="unknown fusion"):
        fusion.fuse_masks(masks, scores, "max")


def test_top_k_edge_cases():
    s = np.array([0.2, 0.9, 0.5])
    assert fusion.top_k(s, 1).tolist() == [1]
    assert sorted(fusion.top_k(s, 10).tolist()) == [0, 1, 2]       # K larger than the candidates
    assert sorted(fusion.top_k(s, None).tolist()) == [0, 1, 2]
    assert fusion.top_k(np.zeros(0), 3).tolist() == []


def test_normalise_and_scores():
    maps = np.array([[[0.0, 2.0]], [[1.0, 1.0]]], np.float32)
    norm = fusion.minmax_normalise(maps)
    np.testing.assert_allclose(norm, [[[0, 1]], [[0.5, 0.5]]])
    assert fusion.image_scores(norm).tolist() == [1.0, 0.5]
    assert fusion.minmax_normalise(np.ones((2, 3, 3), np.float32)).sum() == 0   # constant set
    assert fusion.resize_map(np.ones((5, 7), np.float32), 8).shape == (8, 8)
