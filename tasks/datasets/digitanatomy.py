"""DigitAnatomy (SQUID) loader, and the training normals SQUID generates on the fly, written to files.

Layout (category ``digitanatomy``)::

    <root>/digitanatomy/MNIST/0.npy ... 9.npy      (N x 28 x 28 digits of each class)
    <root>/digitanatomy/test/normal/*.png          label 0, defect_type "good"
    <root>/digitanatomy/test/abnormal/*.png        label 1, defect_type "abnormal" (no masks)
    <root>/digitanatomy/train/good/NNNN.png        written by write_digitanatomy_train (not in SQUID)

A normal image is a 3 x 3 grid of the digits 1..9 in reading order, each a random sample of its class
passed through SQUID's ``RandomResizedCrop(28, scale=(0.6, 1.3), ratio=(1, 1))`` and resized to 32 x 32:
a 96 x 96 grayscale image. anomflow identifies images by content hash, so the training normals are
materialised as PNG files (deterministic bytes for a seed) instead of being drawn per epoch.
Object labels (0 background, k = the digit k's pixels) go to the same sidecar folder as the synthetic
MVTec writer uses (``generated.object_labels_path``).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from tasks.datasets.generated import object_labels_path, prepare_generated_dir, save_png
from tasks.datasets.folder import is_image_name, select_categories, to_relpath
from tasks.datasets.records import DatasetError, ImageRecord

CATEGORY = "digitanatomy"
CELL = 32                      # side of one grid cell after SQUID's Resize(32)
GRID = 3
CROP_SCALE = (0.6, 1.3)        # RandomResizedCrop scale range (ratio fixed to 1)
CROP_ATTEMPTS = 10             # torchvision's attempts before falling back to the whole image
LABEL_THRESHOLD = 32           # a cell pixel brighter than this belongs to the digit in the label map
SPLITS = ("train", "test")


def train_command(root: str, count: int = 1000) -> str:
    """The shell command that writes ``<root>/digitanatomy/train/good``."""
    return f"anomflow synth --layout digitanatomy-train --out {root} --images {count}"


def load_mnist_classes(root: str) -> dict[int, np.ndarray]:
    """``<root>/digitanatomy/MNIST/<d>.npy`` for d = 0..9 -> ``{d: N x h x w uint8}``.

    Float arrays with values in [0, 1] are scaled by 255; anything else is clipped to 0..255.
    ``DatasetError`` naming the file for a missing file or an array that is not a non-empty N x h x w stack.
    """
    folder = os.path.join(os.path.abspath(root), CATEGORY, "MNIST")
    classes = {}
    for digit in range(10):
        path = os.path.join(folder, f"{digit}.npy")
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: MNIST class file not found (DigitAnatomy needs MNIST/0.npy ... 9.npy)")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None
        if arr.ndim != 3 or arr.shape[0] == 0 or min(arr.shape[1:]) < 2:
            raise DatasetError(f"{path}: expected a non-empty N x H x W stack of digits, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DatasetError(f"{path}: expected numeric pixels, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.nan_to_num(arr.astype(np.float64))
            if arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.rint(arr)
        classes[digit] = np.clip(arr, 0, 255).astype(np.uint8)
    return classes


def random_resized_cell(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SQUID's digit augmentation: ``h x w`` uint8 -> ``CELL x CELL`` uint8.

    Like torchvision's ``RandomResizedCrop((h, w), scale=(0.6, 1.3), ratio=(1, 1))``: up to 10 draws of a
    square of ``scale * h * w`` pixels at a random position, kept when it fits (scales above 1 never fit);
    the whole image when none fits. The crop is resized bilinearly to ``h x w``, then to ``CELL x CELL``.
    """
    h, w = digit.shape
    crop = digit
    for _ in range(CROP_ATTEMPTS):
        side = int(round(np.sqrt(h * w * rng.uniform(*CROP_SCALE))))
        if 0 < side <= min(h, w):
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            crop = digit[top:top + side, left:left + side]
            break
    img = Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BILINEAR)
    return np.asarray(img.resize((CELL, CELL), Image.BILINEAR), dtype=np.uint8)


def normal_cells(classes: dict[int, np.ndarray], rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The nine cells of a normal grid: ``[(digit, CELL x CELL uint8), ...]`` for digits 1..9 in reading order."""
    cells = []
    for digit in range(1, 10):
        sample = classes[digit][int(rng.integers(0, classes[digit].shape[0]))]
        cells.append((digit, random_resized_cell(sample, rng)))
    return cells


def compose_grid(cells: list[tuple[int, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Nine ``(object_id, cell)`` in reading order -> (image 96 x 96 uint8, labels 96 x 96 uint8).

    A ``None`` cell stays black (a missing digit). labels: 0 background, ``object_id`` where the cell's
    pixel exceeds ``LABEL_THRESHOLD``.
    """
    side = CELL * GRID
    image = np.zeros((side, side), np.uint8)
    labels = np.zeros((side, side), np.uint8)
    for pos, (object_id, cell) in enumerate(cells):
        if cell is None:
            continue
        r, c = divmod(pos, GRID)
        window = (slice(r * CELL, (r + 1) * CELL), slice(c * CELL, (c + 1) * CELL))
        image[window] = cell
        labels[window] = np.where(cell > LABEL_THRESHOLD, object_id, 0).astype(np.uint8)
    return image, labels


def write_digitanatomy_train(root: str, count: int = 1000, seed: int = 0) -> list[str]:
    """Materialise SQUID's on-the-fly training normals as ``<root>/digitanatomy/train/good/NNNN.png``.

    Reads ``MNIST/<d>.npy``; image i draws from ``default_rng([seed, 0, i])``, so the same seed writes the
    same bytes and a larger count extends a smaller one. Object labels go to
    ``digitanatomy/object_labels/train/good/NNNN.png``. A ``train/`` folder from an earlier call is
    replaced; any other non-empty one raises ``FileExistsError``. Returns the written relpaths.
    """

    if count < 1:
        raise ValueError("count must be at least 1")
    classes = load_mnist_classes(root)
    root_abs = os.path.abspath(root)
    prepare_generated_dir(os.path.join(root_abs, CATEGORY, "train"), "tasks.datasets.digitanatomy")
    shutil.rmtree(os.path.join(root_abs, CATEGORY, "object_labels", "train"), ignore_errors=True)
    width = max(4, len(str(count - 1)))
    written = []
    for i in range(count):
        rng = np.random.default_rng([seed, 0, i])
        image, labels = compose_grid(normal_cells(classes, rng))
        rel = f"{CATEGORY}/train/good/{i:0{width}d}.png"
        save_png(image, os.path.join(root_abs, rel))
        save_png(labels, os.path.join(root_abs, object_labels_path(rel)))
        written.append(rel)
    return written


def _records(root_abs: str, folder: str, split: str, label: int, defect_type: str) -> list[ImageRecord]:
    path = os.path.join(root_abs, CATEGORY, split, folder)
    if not os.path.isdir(path):
        return []
    names = sorted(n for n in os.listdir(path) if is_image_name(n))
    return [ImageRecord(path=os.path.join(path, n), relpath=to_relpath(os.path.join(path, n), root_abs),
                        category=CATEGORY, split=split, label=label, defect_type=defect_type, mask_path=None)
            for n in names]


def load_digitanatomy(root: str, categories: list[str] | None = None, split: str = "test") -> list[ImageRecord]:
    """Records of DigitAnatomy, sorted by relpath.

    split ``test``: ``test/normal`` (label 0, defect_type ``good``) and ``test/abnormal`` (label 1,
    ``abnormal``); ``train``: ``train/good`` (label 0), which ``write_digitanatomy_train`` writes; a
    ``DatasetError`` gives the command when it is missing. No masks (image labels only).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for DigitAnatomy; expected one of {', '.join(SPLITS)}")
    root_abs = os.path.abspath(root)
    found = [CATEGORY] if os.path.isdir(os.path.join(root_abs, CATEGORY)) else []
    if not found:
        raise DatasetError(f"no {CATEGORY}/ folder under {root} (expected {CATEGORY}/MNIST and {CATEGORY}/test)")
    if not select_categories(found, categories, root):
        return []
    if split == "train":
        if not os.path.isdir(os.path.join(root_abs, CATEGORY, "train", "good")):
            raise DatasetError(
                f"{os.path.join(root_abs, CATEGORY, 'train', 'good')} not found: DigitAnatomy's training normals are "
                f"generated, write them with: {train_command(root)}")
        return _records(root_abs, "good", "train", 0, "good")
    records = _records(root_abs, "normal", "test", 0, "good") + _records(root_abs, "abnormal", "test", 1, "abnormal")
    return sorted(records, key=lambda r: r.relpath)
