"""Turn dataset records into run items: cheap checks and content hashes, no decoding.

Content hashes are cached in the store's index per dataset root, keyed on (relpath, size, mtime_ns), so a
scheduled run over a large folder reads only new or changed files. The hash still decides identity: stages
decode only bytes that hash to the item's id (``read_image(..., expect_sha256=...)``), so a file rewritten
mid-run fails that image instead of being stored under its old hash.

Side inputs are other files a stage reads per image (ground-truth masks, object labels); their hashes join
the identity of every item computed from them (``item_of``).
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Callable

from stores import item_key
from stores.index import Index
from tasks.datasets.generated import object_labels_path
from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem, inside_root

ABSENT = "absent"
_RACY_SECONDS = 2.0   # a file modified this recently may still be being written: hash it, don't cache it

SIDE_INPUTS: dict[str, Callable[[ImageRecord, str | None], str | None]] = {
    "mask": lambda rec, root: rec.mask_path,
    "labels": lambda rec, root: os.path.join(root or os.path.dirname(rec.path), object_labels_path(rec.relpath)),
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 of files under ``root``, reusing the index's record when (size, mtime_ns) are unchanged."""

    def __init__(self, index: Index | None, root: str | None):
        self.index, self.root = index, os.path.abspath(root) if root else None
        self.known = index.input_hashes(self.root) if index is not None and self.root else {}
        self.fresh: dict[str, tuple[int, int, str]] = {}
        self.hashed = 0   # files actually read

    def sha256(self, path: str) -> str:
        st = os.stat(path)
        rel = os.path.relpath(path, self.root) if self.root else path
        hit = self.known.get(rel)
        if hit is not None and (hit[0], hit[1]) == (st.st_size, st.st_mtime_ns):
            return hit[2]
        sha = _sha256(path)
        self.hashed += 1
        if time.time() - st.st_mtime_ns / 1e9 > _RACY_SECONDS:
            self.fresh[rel] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def save(self) -> None:
        if self.index is not None and self.root and self.fresh:
            self.index.save_input_hashes(self.root, self.fresh)


def prepare_images(records: list[ImageRecord], root: str | None, hashes: HashCache | None = None,
                   side_inputs: tuple[str, ...] = ()) -> tuple[list[ImageItem], dict[str, str]]:
    """Hash every readable file (and its side inputs); report the rest as ``{path: reason}``.

    Decoding errors (truncated, not an image, too large) surface in the first stage that reads pixels.
    """
    hashes = hashes or HashCache(None, root)
    items: list[ImageItem] = []
    failures: dict[str, str] = {}
    for rec in records:
        if not inside_root(rec.path, root):
            failures[rec.path] = f"resolves outside the dataset root ({root})"
        elif os.path.isdir(rec.path):
            failures[rec.path] = "is a directory, not an image file"
        elif not os.path.isfile(rec.path):
            failures[rec.path] = "file not found"
        elif os.path.getsize(rec.path) == 0:
            failures[rec.path] = "empty file (0 bytes)"
        else:
            try:
                side = tuple((name, _side_hash(hashes, SIDE_INPUTS[name](rec, root))) for name in sorted(side_inputs))
                items.append(ImageItem(hashes.sha256(rec.path), rec, side))
            except OSError as exc:
                failures[rec.path] = f"unreadable: {exc.strerror or exc}"
    hashes.save()
    return items, failures


def _side_hash(hashes: HashCache, path: str | None) -> str:
    """The file's sha256; for a directory (MVTec LOCO's ground truth: one PNG per defect) one hash over its
    files' names and hashes; ABSENT when there is nothing."""
    if path and os.path.isfile(path):
        return hashes.sha256(path)
    if path and os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
        return item_key("dir", *(f"{n}:{hashes.sha256(os.path.join(path, n))}" for n in names)) if names else ABSENT
    return ABSENT


def item_of(image: ImageItem, side_inputs: tuple[str, ...] = ()) -> str:
    """An image's item id in an artifact whose lineage read these side inputs (the image id if none)."""
    if not side_inputs:
        return image.image_id
    known = dict(image.side)
    missing = [s for s in side_inputs if s not in known]
    if missing:
        raise ValueError(f"side input(s) {missing} were not hashed for {image.record.path}; "
                         "pass them to start_run")
    return item_key(image.image_id, *(f"{s}:{known[s]}" for s in sorted(side_inputs)))
