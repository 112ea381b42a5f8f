"""The unit every dataset loader yields: one image with its label and optional mask."""
from __future__ import annotations

from dataclasses import dataclass


class DatasetError(ValueError):
    """A dataset root or layout that cannot be read at all (empty folder, missing csv, ...)."""


class ImageError(ValueError):
    """One item could not be read. `path` names it, `reason` says why in plain words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    path: absolute path of the image file.
    relpath: path relative to the dataset root, in the official layout
        (e.g. ``bottle/test/broken_large/000.png``); reused to lay out saved maps.
    category: product category (``bottle``, ``pcb1``, or the folder name for plain folders).
    split: ``train``, ``validation`` (MVTec LOCO) or ``test``.
    label: 0 normal, 1 anomalous, None when unknown (plain folders).
    defect_type: ``good``, a defect folder name, or ``""`` when unknown.
    mask_path: absolute path of the ground-truth mask (MVTec LOCO: the directory of its channel PNGs), None for
        normal or unlabelled images and for datasets with image labels only (DigitAnatomy).
    """

    path: str
    relpath: str
    category: str
    split: str
    label: int | None
    defect_type: str
    mask_path: str | None = None

    @property
    def stem(self) -> str:
        name = self.relpath.rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0]
