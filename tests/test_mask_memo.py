"""The per-(image, box) SAM mask memo: only unseen boxes are decoded, results come back in order, exactly."""
from __future__ import annotations

import numpy as np
import pytest

from stores import ArtifactStore
from tasks.saa import regions
from tasks.stages.sam_memo import BoxMaskMemo, memo_stage

HW = (32, 40)


class CountingDecoder:
    """An oracle decoder (the filled box) that records every box it is asked for."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        self.seen.extend(boxes)
        return regions.box_masks(boxes, HW)


def _memo(tmp_path) -> BoxMaskMemo:
    store = ArtifactStore(str(tmp_path / "store"))
    embeddings = store.ensure_artifact("image_embedding", "e" * 64, {})
    return BoxMaskMemo(store, memo_stage({"name": "tiny-sam", "weights_sha256": "x"}, embeddings))


def _boxes(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def test_only_unseen_boxes_are_decoded_and_order_is_kept(tmp_path):
    memo, dec = _memo(tmp_path), CountingDecoder()
    a, b, c = (1, 1, 10, 10), (5, 2, 30, 20), (0, 0, 39, 31)
    first = memo.masks_for("img1", _boxes(a, b), HW, dec)
    assert len(dec.seen) == 2 and (memo.decoded, memo.reused) == (2, 0)
    second = memo.masks_for("img1", _boxes(c, a, b, c), HW, dec)   # c twice: decoded once
    assert len(dec.seen) == 3 and np.array_equal(dec.seen[-1], _boxes(c)[0])
    assert (memo.decoded, memo.reused) == (3, 2)                 # a and b from the memo
    np.testing.assert_array_equal(second, regions.box_masks(_boxes(c, a, b, c), HW))
    np.testing.assert_array_equal(second[1:3], first)


def test_the_memo_persists_in_the_store_and_is_per_image(tmp_path):
    dec = CountingDecoder()
    first = _memo(tmp_path)
    first.masks_for("img1", _boxes((1, 1, 10, 10)), HW, dec)
    first.flush()                                            # one pack per refinement batch
    fresh = _memo(tmp_path)                                  # a later run lists what earlier runs wrote
    fresh.masks_for("img1", _boxes((1, 1, 10, 10)), HW, dec)
    assert len(dec.seen) == 1 and fresh.reused == 1
    fresh.masks_for("img2", _boxes((1, 1, 10, 10)), HW, dec)  # same box, other image: decoded
    assert len(dec.seen) == 2


def test_no_boxes_and_a_bad_decoder(tmp_path):
    memo = _memo(tmp_path)
    assert memo.masks_for("img1", np.zeros((0, 4), np.float32), HW, CountingDecoder()).shape == (0, *HW)
    with pytest.raises(ValueError, match="decoder returned"):
        memo.masks_for("img1", _boxes((1, 1, 5, 5)), HW, lambda boxes: np.zeros((len(boxes), 3, 3), bool))
    assert memo.decoded == 0 and memo._pending == []    # nothing half-remembered
