"""The per-(image, prompt) SAM decode memo: only unseen prompts are decoded, results come back in order, exactly,
and a prompt is the whole of it (box, points, labels, multimask)."""
from __future__ import annotations

import numpy as np
import pytest

from stores import ArtifactStore
from tasks.saa import regions
from tasks.stages.sam_memo import PromptMaskMemo, memo_stage

HW = (32, 40)


class CountingDecoder:
    """An oracle decoder: the filled box (or a disc at the first point, radius = number of points), K copies with
    scores 0.1 k; records every prompt it is asked for."""

    def __init__(self):
        self.seen: list[tuple] = []

    def __call__(self, boxes, points, labels, multimask):
        n = len(boxes) if boxes is not None else len(points)
        k = 3 if multimask else 1
        masks = np.zeros((n, k, *HW), bool)
        for i in range(n):
            self.seen.append((None if boxes is None else tuple(boxes[i]),
                              None if points is None else points[i].tobytes() + labels[i].tobytes(), multimask))
            if boxes is not None:
                masks[i, :] = regions.box_masks(boxes[i:i + 1], HW)[0]
            else:
                yy, xx = np.mgrid[:HW[0], :HW[1]]
                x, y = points[i][0]
                masks[i, :] = (yy - y) ** 2 + (xx - x) ** 2 <= len(points[i]) ** 2 + int(labels[i][0])
        return masks, np.tile(np.arange(1, k + 1, dtype=np.float32) / 10, (n, 1))


def _memo(tmp_path) -> PromptMaskMemo:
    store = ArtifactStore(str(tmp_path / "store"))
    embeddings = store.ensure_artifact("image_embedding", "e" * 64, {})
    return PromptMaskMemo(store, memo_stage({"name": "tiny-sam", "weights_sha256": "x"}, embeddings))


def _boxes(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def test_only_unseen_boxes_are_decoded_and_order_is_kept(tmp_path):
    memo, dec = _memo(tmp_path), CountingDecoder()
    a, b, c = (1, 1, 10, 10), (5, 2, 30, 20), (0, 0, 39, 31)
    first = memo.box_masks("img1", _boxes(a, b), HW, dec)
    assert len(dec.seen) == 2 and (memo.decoded, memo.reused) == (2, 0)
    second = memo.box_masks("img1", _boxes(c, a, b, c), HW, dec)   # c twice: decoded once
    assert len(dec.seen) == 3 and dec.seen[-1][0] == tuple(_boxes(c)[0])
    assert (memo.decoded, memo.reused) == (3, 2)                 # a and b from the memo
    np.testing.assert_array_equal(second, regions.box_masks(_boxes(c, a, b, c), HW))
    np.testing.assert_array_equal(second[1:3], first)


def test_the_memo_persists_in_the_store_and_is_per_image(tmp_path):
    dec = CountingDecoder()
    first = _memo(tmp_path)
    first.box_masks("img1", _boxes((1, 1, 10, 10)), HW, dec)
    first.flush()                                            # one pack per refinement batch
    fresh = _memo(tmp_path)                                  # a later run lists what earlier runs wrote
    fresh.box_masks("img1", _boxes((1, 1, 10, 10)), HW, dec)
    assert len(dec.seen) == 1 and fresh.reused == 1
    fresh.box_masks("img2", _boxes((1, 1, 10, 10)), HW, dec)  # same box, other image: decoded
    assert len(dec.seen) == 2


def test_the_key_is_the_full_prompt_box_points_labels_and_multimask(tmp_path):
    memo, dec = _memo(tmp_path), CountingDecoder()
    box = _boxes((1, 1, 10, 10))
    pts = np.array([[[5.0, 6.0]]], np.float32)
    single, _ = memo.masks_for("img1", HW, dec, boxes=box)
    multi, multi_scores = memo.masks_for("img1", HW, dec, boxes=box, multimask=True)    # same box, multimask
    assert len(dec.seen) == 2 and single.shape == (1, 1, *HW) and multi.shape == (1, 3, *HW)
    np.testing.assert_allclose(multi_scores, [[0.1, 0.2, 0.3]])
    memo.masks_for("img1", HW, dec, boxes=box, points=pts)                        # box + a point: new prompt
    memo.masks_for("img1", HW, dec, points=pts, labels=np.array([[1]]))          # the point alone: new
    memo.masks_for("img1", HW, dec, points=pts, labels=np.array([[0]]))          # other label: new
    assert len(dec.seen) == 5
    again, _ = memo.masks_for("img1", HW, dec, points=pts, labels=np.array([[0]]))
    memo.flush()
    fresh = _memo(tmp_path)                                   # every variant is found again from the store
    for kwargs in ({"boxes": box}, {"boxes": box, "multimask": True}, {"boxes": box, "points": pts},
                   {"points": pts, "labels": np.array([[1]])}, {"points": pts, "labels": np.array([[0]])}):
        fresh.masks_for("img1", HW, dec, **kwargs)
    assert len(dec.seen) == 5 and fresh.reused == 5 and memo.reused == 1
    assert not np.array_equal(again, memo.masks_for("img1", HW, dec, points=pts, labels=np.array([[1]]))[0])


def test_no_prompts_and_a_bad_decoder(tmp_path):
    memo = _memo(tmp_path)
    assert memo.box_masks("img1", np.zeros((0, 4), np.float32), HW, CountingDecoder()).shape == (0, *HW)
    with pytest.raises(ValueError, match="decoder returned"):
        memo.box_masks("img1", _boxes((1, 1, 5, 5)), HW,
                       lambda b, p, lab, m: (np.zeros((len(b), 1, 3, 3), bool), np.zeros((len(b), 1))))
    assert memo.decoded == 0 and memo._pending == []    # nothing half-remembered
