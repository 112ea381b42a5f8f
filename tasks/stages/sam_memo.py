"""A memo of SAM decodes per (image, prompt), shared by every stage that prompts SAM on one embedding.

Why: a refinement artifact is keyed by its whole prompt set, so a variant whose boxes differ by a few (the
ablation's "without property prompt" keeps the boxes the area rule dropped; a new θ; object and defect
passes that share a box) would otherwise decode every box again. The memo decodes only prompts that no
earlier call decoded for that image.

Artifact ``sam_prompt_masks/<key>``, key = SAM identity + the embedding artifact's key (which fixes the image
preprocessing). A prompt is the whole of what SAM's decoder reads: its box (or none), its points and their
labels (or none), and the multimask switch; its memo key is the bytes of all four (float32 / int32), so two
prompts match only if every part is identical. Items are named ``<image id>.<digest>``; each holds one decode
call's ``prompt_keys`` N x L uint8, ``masks`` N x K x H x W bool and ``scores`` N x K float32 (K = 3 with
multimask, else 1).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from stores import ArtifactRef, ArtifactStore, ItemData
from stores.runs import session
from tasks.engine.runner import StageDef

MEMO_STAGE = "sam_prompt_masks"
# (boxes N x 4 | None, points N x P x 2 | None, labels N x P | None, multimask) -> (N x K x H x W, N x K)
DecodeFn = Callable[[np.ndarray | None, np.ndarray | None, np.ndarray | None, bool], tuple[np.ndarray, np.ndarray]]


def memo_stage(sam_identity: dict, embeddings: ArtifactRef) -> StageDef:
    return StageDef(MEMO_STAGE, 2, {}, (sam_identity,), (embeddings,))   # v2: keyed on the full prompt


def prompt_keys(n: int, boxes: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None,
                multimask: bool) -> list[bytes]:
    """One key per prompt: b"b" + box, b"p" + points + labels, b"m" + multimask (absent parts are empty)."""
    rows = []
    for i in range(n):
        key = b"b" + (np.asarray(boxes[i], np.float32).tobytes() if boxes is not None else b"")
        key += b"p" + (np.asarray(points[i], np.float32).tobytes() + np.asarray(labels[i], np.int32).tobytes()
                       if points is not None else b"")
        rows.append(key + b"m" + bytes([bool(multimask)]))
    return rows


class PromptMaskMemo:
    """Decodes already made per image; :meth:`masks_for` decodes only what is missing.

    New entries are held until :meth:`flush`, which commits them as one pack (one per stage batch).
    """

    def __init__(self, store: ArtifactStore, stage: StageDef, run_id: str | None = None):
        self.store, self.run_id = store, run_id
        if run_id and session(run_id):
            session(run_id).announce(f"{stage.name}/{stage.key}")
        self.ref = store.ensure_artifact(stage.name, stage.key, stage.record())
        self.view = store.open(self.ref)
        self._entries: dict[str, list[str]] = {}      # image -> committed entry ids, looked up on first use
        self._pending: list[tuple[str, ItemData]] = []
        self.decoded = 0   # prompts sent to the decoder by this memo
        self.reused = 0    # prompts answered from the memo

    def box_masks(self, image: str, boxes: np.ndarray, hw: tuple[int, int], decode: DecodeFn) -> np.ndarray:
        """boxes N x 4 xyxy px -> N x H x W bool, one single-mask decode per box (duplicates decoded once)."""
        boxes = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
        return self.masks_for(image, hw, decode, boxes=boxes)[0][:, 0]

    def masks_for(self, image: str, hw: tuple[int, int], decode: DecodeFn, boxes: np.ndarray | None = None,
                  points: np.ndarray | None = None, labels: np.ndarray | None = None,
                  multimask: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """N prompts (boxes N x 4 and/or points N x P x 2 with labels N x P) -> (masks N x K x H x W, scores N x K)."""
        n = len(boxes) if boxes is not None else len(points) if points is not None else 0
        k = 3 if multimask else 1
        if n == 0:
            return np.zeros((0, k, *hw), bool), np.zeros((0, k), np.float32)
        if points is not None and labels is None:
            labels = np.ones(np.shape(points)[:2], np.int32)
        keys = prompt_keys(n, boxes, points, labels, multimask)
        known = self._lookup(image, set(keys))
        self.reused += sum(key in known for key in keys)
        missing = [i for i, key in enumerate(keys) if key not in known and keys.index(key) == i]
        if missing:
            pick = (lambda a: None if a is None else np.asarray(a)[missing])
            masks, scores = decode(pick(boxes), pick(points), pick(labels), multimask)
            masks, scores = np.asarray(masks, bool), np.asarray(scores, np.float32)
            if masks.shape != (len(missing), k, *hw) or scores.shape != (len(missing), k):
                raise ValueError(f"decoder returned {masks.shape} / {scores.shape} for {len(missing)} prompts on {hw}")
            new_keys = [keys[i] for i in missing]
            width = max(len(key) for key in new_keys)
            key_rows = np.zeros((len(new_keys), width), np.uint8)
            for row, key in zip(key_rows, new_keys):
                row[:len(key)] = np.frombuffer(key, np.uint8)
            item = f"{image}.{hashlib.sha256(b''.join(new_keys)).hexdigest()[:16]}"
            self._pending.append((item, ItemData({"prompt_keys": key_rows, "masks": masks, "scores": scores},
                                                 {"key_lengths": [len(key) for key in new_keys]})))
            known.update((key, (m, s)) for key, m, s in zip(new_keys, masks, scores))
            self.decoded += len(missing)
        return np.stack([known[key][0] for key in keys]), np.stack([known[key][1] for key in keys])

    def _lookup(self, image: str, wanted: set[bytes]) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
        """Decodes of wanted prompts from this image's entries (committed, then pending)."""
        if image not in self._entries:
            self._entries[image] = self.view.items_with_prefix(image + ".")
        sources = [(lambda i=i: self.view.read(i)) for i in self._entries[image]]
        sources += [(lambda d=d: d) for i, d in self._pending if i.startswith(image + ".")]
        found: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for source in sources:
            if not wanted - found.keys():
                break
            entry = source()
            rows = entry.arrays["prompt_keys"]
            for n, length in enumerate(entry.meta["key_lengths"]):
                key = rows[n, :length].tobytes()
                if key in wanted:
                    found[key] = (entry.arrays["masks"][n], entry.arrays["scores"][n])
        return found

    def flush(self) -> None:
        """Commit the entries decoded since the last flush as one pack."""
        if self._pending:
            self.store.write_batch(self.ref, self._pending, self.run_id)
            for item, _ in self._pending:
                self._entries.setdefault(item.split(".", 1)[0], []).append(item)
            self._pending = []
