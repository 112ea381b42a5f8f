"""Turn dataset records into run items: cheap checks and content hashes, no decoding."""
from __future__ import annotations

import hashlib
import os

from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem, inside_root


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_images(records: list[ImageRecord], root: str | None) -> tuple[list[ImageItem], dict[str, str]]:
    """Hash every readable file; report the rest as ``{path: reason}``.

    Decoding errors (truncated, not an image, too large) surface in the first stage that reads pixels.
    """
    items: list[ImageItem] = []
    failures: dict[str, str] = {}
    for rec in records:
        if not inside_root(rec.path, root):
            failures[rec.path] = f"resolves outside the dataset root ({root})"
        elif not os.path.isfile(rec.path):
            failures[rec.path] = "file not found"
        elif os.path.getsize(rec.path) == 0:
            failures[rec.path] = "empty file (0 bytes)"
        else:
            try:
                items.append(ImageItem(_sha256(rec.path), rec))
            except OSError as exc:
                failures[rec.path] = f"unreadable: {exc.strerror or exc}"
    return items, failures
