"""Datasets: loaders yielding ``ImageRecord``s (no pixels read) and safe image/mask readers.

``load_dataset(kind, root, categories=None, split="test")`` dispatches on kind:

- ``mvtec``: MVTec AD official layout (``tasks.datasets.mvtec``);
- ``visa``: VisA with ``split_csv/1cls.csv`` (``tasks.datasets.visa``);
- ``loco``: MVTec LOCO AD official layout, splits train / validation / test; an anomalous image's
  ``mask_path`` is its ground-truth DIRECTORY of channel PNGs, read with ``loco.read_loco_channels``
  and ``loco.read_defects_config`` (``tasks.datasets.loco``);
- ``digitanatomy``: SQUID's DigitAnatomy, image labels only; its train split is materialised by
  ``write_digitanatomy_train`` (``tasks.datasets.digitanatomy``);
- ``folder``: any folder of unlabelled images (``tasks.datasets.folder``).

Pixels are read later with ``read_image`` (H x W x 3 uint8; grayscale is replicated to 3 channels) and
``read_mask`` (H x W bool).
"""
from __future__ import annotations

import os

from tasks.datasets.digitanatomy import load_digitanatomy
from tasks.datasets.folder import IMAGE_EXTS, load_folder
from tasks.datasets.image_io import file_sha256, read_image, read_mask
from tasks.datasets.loco import load_loco
from tasks.datasets.mvtec import load_mvtec
from tasks.datasets.records import DatasetError, ImageError, ImageRecord
from tasks.datasets.visa import load_visa

LOADERS = {"mvtec": load_mvtec, "visa": load_visa, "loco": load_loco, "digitanatomy": load_digitanatomy,
           "folder": load_folder}

__all__ = [
    "DatasetError", "ImageError", "ImageRecord", "IMAGE_EXTS", "LOADERS",
    "file_sha256", "load_dataset", "read_image", "read_mask",
]


def load_dataset(kind: str, root: str, categories: list[str] | None = None,
                 split: str = "test") -> list[ImageRecord]:
    """All records of one dataset, sorted by relpath.

    kind: ``mvtec``, ``visa``, ``loco``, ``digitanatomy`` or ``folder`` (case-insensitive).
    categories: names to keep; None keeps every category found.
    split: ``test`` (default) or ``train``; ``loco`` also has ``validation``; ``folder`` has only ``test``.
    Raises ``DatasetError`` for an unknown kind, a missing root, an unknown category, or
    when nothing is found.
    """
    key = str(kind).strip().lower()
    loader = LOADERS.get(key)
    if loader is None:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(LOADERS)}")
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DatasetError(f"dataset root not found: {root}")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset root is not a directory: {root}")
    if isinstance(categories, str):
        categories = [categories]
    records = loader(root, categories, split)
    if not records:
        looked = ", ".join(f"*{e}" for e in IMAGE_EXTS)
        scope = f"split {split!r}" + (f", categories {', '.join(categories)}" if categories else "")
        raise DatasetError(f"no images found under {root} (looked for {looked}; {scope})")
    return records
