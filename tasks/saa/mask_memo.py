"""A memo of SAM masks per (image, box prompt), shared by every stage that refines boxes with one embedding.

Why: a refinement artifact is keyed by its whole box set, so a variant whose boxes differ by a few (the
ablation's "without property prompt" keeps the boxes the area rule dropped; a new θ; object and defect
passes that share a box) would otherwise decode every box again. The memo decodes only boxes that no
earlier call decoded for that image.

Artifact ``sam_box_masks/<key>``, key = SAM identity + the embedding artifact's key (which fixes the image
preprocessing). Items are named ``<image id>.<digest of the boxes>``; each holds one decode call's
``boxes`` K x 4 float32 xyxy px and ``masks`` K x H x W bool. A box matches only if its float32 bytes are
identical, which holds because boxes come from the same cached detections through the same filter.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Callable

import numpy as np

from stores import ArtifactRef, ArtifactStore, ItemData
from tasks.engine.runner import StageDef

MEMO_STAGE = "sam_box_masks"
DecodeFn = Callable[[np.ndarray], np.ndarray]   # boxes K x 4 -> masks K x H x W bool


def memo_stage(sam_identity: dict, embeddings: ArtifactRef) -> StageDef:
    return StageDef(MEMO_STAGE, 1, {"multimask": False}, (sam_identity,), (embeddings,))


class BoxMaskMemo:
    """Masks already decoded for each image, listed once; :meth:`masks_for` decodes only what is missing."""

    def __init__(self, store: ArtifactStore, stage: StageDef):
        self.store = store
        self.ref = store.ensure_artifact(stage.name, stage.key, stage.record())
        self._listing: dict[str, list[tuple[str, str]]] | None = None   # image -> [(item, write id)], on first use
        self.decoded = 0   # boxes sent to the decoder by this memo
        self.reused = 0    # boxes answered from the memo

    @property
    def _entries(self) -> dict[str, list[tuple[str, str]]]:
        """The memo's entries per image, listed once (only if a refinement has anything to compute)."""
        if self._listing is None:
            self._listing = defaultdict(list)
            for item, write_id in self.store.committed_items(self.ref).items():
                self._listing[item.split(".", 1)[0]].append((item, write_id))
        return self._listing

    def masks_for(self, image: str, boxes: np.ndarray, hw: tuple[int, int], decode: DecodeFn) -> np.ndarray:
        """boxes N x 4 xyxy px -> masks N x H x W bool, one per box, in order (duplicates decoded once)."""
        boxes = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, *hw), bool)
        keys = [row.tobytes() for row in boxes]
        known = self._lookup(image, set(keys))
        self.reused += sum(k in known for k in keys)
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        if missing:
            new_boxes = np.frombuffer(b"".join(missing), np.float32).reshape(-1, 4)
            new_masks = np.asarray(decode(new_boxes), bool)
            if new_masks.shape != (len(new_boxes), *hw):
                raise ValueError(f"decoder returned {new_masks.shape} for {len(new_boxes)} boxes on {hw}")
            self._remember(image, new_boxes, new_masks)
            known.update(zip(missing, new_masks))
            self.decoded += len(new_boxes)
        return np.stack([known[k] for k in keys])

    def _lookup(self, image: str, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
        """Read the masks of wanted boxes from this image's entries (an entry's masks only if it has a hit)."""
        found: dict[bytes, np.ndarray] = {}
        for item, write_id in self._entries.get(image, []):
            if not wanted - found.keys():
                break
            entry_boxes = self.store.read_array(self.ref, item, write_id, "boxes")
            hits = [n for n, row in enumerate(entry_boxes) if row.tobytes() in wanted]
            if hits:
                masks = self.store.read_array(self.ref, item, write_id, "masks")
                found.update((entry_boxes[n].tobytes(), masks[n]) for n in hits)
        return found

    def _remember(self, image: str, boxes: np.ndarray, masks: np.ndarray) -> None:
        item = f"{image}.{hashlib.sha256(boxes.tobytes()).hexdigest()[:16]}"
        write_id = self.store.write_item(self.ref, item, ItemData({"boxes": boxes, "masks": masks}))
        self._entries[image].append((item, write_id))
