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
from typing import Callable

import numpy as np

from stores import ArtifactRef, ArtifactStore, ItemData
from stores.runs import session
from tasks.engine.runner import StageDef

MEMO_STAGE = "sam_box_masks"
DecodeFn = Callable[[np.ndarray], np.ndarray]   # boxes K x 4 -> masks K x H x W bool


def memo_stage(sam_identity: dict, embeddings: ArtifactRef) -> StageDef:
    return StageDef(MEMO_STAGE, 1, {"multimask": False}, (sam_identity,), (embeddings,))


class BoxMaskMemo:
    """Masks already decoded per image; :meth:`masks_for` decodes only what is missing.

    New entries are held until :meth:`flush`, which commits them as one pack (one per refinement batch).
    """

    def __init__(self, store: ArtifactStore, stage: StageDef, run_id: str | None = None):
        self.store, self.run_id = store, run_id
        if run_id and session(run_id):
            session(run_id).announce(f"{stage.name}/{stage.key}")
        self.ref = store.ensure_artifact(stage.name, stage.key, stage.record())
        self.view = store.open(self.ref)
        self._entries: dict[str, list[str]] = {}      # image -> committed entry ids, looked up on first use
        self._pending: list[tuple[str, ItemData]] = []
        self.decoded = 0   # boxes sent to the decoder by this memo
        self.reused = 0    # boxes answered from the memo

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
            item = f"{image}.{hashlib.sha256(new_boxes.tobytes()).hexdigest()[:16]}"
            self._pending.append((item, ItemData({"boxes": new_boxes, "masks": new_masks})))
            known.update(zip(missing, new_masks))
            self.decoded += len(new_boxes)
        return np.stack([known[k] for k in keys])

    def _lookup(self, image: str, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
        """Masks of wanted boxes from this image's entries (committed, then pending)."""
        if image not in self._entries:
            self._entries[image] = self.view.items_with_prefix(image + ".")
        sources = [(lambda i=i: self.view.read(i).arrays) for i in self._entries[image]]
        sources += [(lambda d=d: d.arrays) for i, d in self._pending if i.startswith(image + ".")]
        found: dict[bytes, np.ndarray] = {}
        for source in sources:
            if not wanted - found.keys():
                break
            entry = source()
            hits = [n for n, row in enumerate(entry["boxes"]) if row.tobytes() in wanted]
            found.update((entry["boxes"][n].tobytes(), entry["masks"][n]) for n in hits)
        return found

    def flush(self) -> None:
        """Commit the entries decoded since the last flush as one pack."""
        if self._pending:
            self.store.write_batch(self.ref, self._pending, self.run_id)
            for item, _ in self._pending:
                self._entries.setdefault(item.split(".", 1)[0], []).append(item)
            self._pending = []
