"""A synthetic DigitAnatomy dataset (SQUID layout) built from scikit-learn's bundled digits, deterministic for a seed.

MNIST cannot be downloaded here, so ``MNIST/<d>.npy`` holds ``sklearn.datasets.load_digits`` samples
(8 x 8, 17 grey levels) upscaled bicubically to 20 x 20, scaled to 0..255 and padded by 4 pixels to
28 x 28, the way MNIST centres its 20 x 20 digits. ``write_synthetic_digitanatomy`` then writes::

    <out>/digitanatomy/MNIST/0.npy ... 9.npy        (N x 28 x 28 uint8, about 180 per class)
    <out>/digitanatomy/test/normal/NNN.png          correct grids
    <out>/digitanatomy/test/abnormal/NNN.png        one anomaly each, cycling through ANOMALY_KINDS
    <out>/digitanatomy/test/anomaly_kinds.json      {"normal/000.png": "normal", "abnormal/000.png": "missing", ...}
    <out>/digitanatomy/train/good/NNNN.png          via write_digitanatomy_train
    <out>/digitanatomy/object_labels/...            label PNGs (0 background, k = digit k, 10 = an intruding 0)

Anomaly kinds: ``missing`` (one cell left blank), ``out_of_order`` (two cells swapped), ``flipped`` (one
digit mirrored left-right; never 1 or 8, which look alike mirrored), ``zero`` (a 0 replaces one digit).
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

from tasks.datasets.digitanatomy import (CATEGORY, compose_grid, normal_cells, random_resized_cell,
                                         write_digitanatomy_train)
from tasks.datasets.generated import object_labels_path, prepare_generated_dir, save_png

ANOMALY_KINDS = ("missing", "out_of_order", "flipped", "zero")
ZERO_OBJECT_ID = 10            # label of a 0 that replaced a digit (not one of the nine objects)
_FLIPPABLE = (2, 3, 4, 5, 6, 7, 9)


def sklearn_mnist_classes() -> dict[int, np.ndarray]:
    """``{d: N_d x 28 x 28 uint8}`` from ``sklearn.datasets.load_digits`` (8 x 8, values 0..16).

    Each digit: bicubic upscale to 20 x 20 (OpenCV), times 255 / 16, rounded and clipped to 0..255,
    zero-padded by 4 pixels on every side.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = {}
    for d in range(10):
        stack = []
        for img in digits.images[digits.target == d]:
            big = cv2.resize(img.astype(np.float32), (20, 20), interpolation=cv2.INTER_CUBIC)
            big = np.clip(np.rint(big * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            stack.append(np.pad(big, 4))
        classes[d] = np.stack(stack)
    return classes


def render_digit_sample(classes: dict[int, np.ndarray], kind: str | None, rng: np.random.Generator):
    """One test grid -> (image 96 x 96 uint8, labels 96 x 96 uint8).

    kind: None (normal) or one of ``ANOMALY_KINDS``; the cell(s) changed are drawn from ``rng``.
    """
    cells: list = list(normal_cells(classes, rng))
    if kind is None:
        pass
    elif kind == "missing":
        pos = int(rng.integers(9))
        cells[pos] = (0, None)
    elif kind == "out_of_order":
        a, b = (int(v) for v in rng.choice(9, size=2, replace=False))
        cells[a], cells[b] = cells[b], cells[a]
    elif kind == "flipped":
        digit = int(rng.choice(_FLIPPABLE))
        pos = digit - 1
        cells[pos] = (digit, np.ascontiguousarray(cells[pos][1][:, ::-1]))
    elif kind == "zero":
        pos = int(rng.integers(9))
        zero = classes[0][int(rng.integers(0, classes[0].shape[0]))]
        cells[pos] = (ZERO_OBJECT_ID, random_resized_cell(zero, rng))
    else:
        raise ValueError(f"unknown DigitAnatomy anomaly {kind!r}; expected one of {', '.join(ANOMALY_KINDS)}")
    return compose_grid(cells)


def write_synthetic_digitanatomy(out_dir: str, test: int = 8, train: int = 100, seed: int = 0) -> dict[str, str]:
    """Write the synthetic DigitAnatomy set under ``out_dir``; return the manifest ``{"abnormal/000.png": kind, ...}``
    (paths relative to ``digitanatomy/test``; normal images map to ``"normal"``).

    test: images in ``test/normal`` and, separately, in ``test/abnormal`` (kinds cycle through
    ``ANOMALY_KINDS``, so ``test >= 4`` holds every kind); train: images in ``train/good``.
    Same arguments, same bytes. A ``digitanatomy`` folder from an earlier run is replaced; any other
    non-empty one raises ``FileExistsError``.
    """
    if test < 1 or train < 1:
        raise ValueError("test and train must be at least 1")
    root = os.path.abspath(out_dir)
    prepare_generated_dir(os.path.join(root, CATEGORY), "tasks.datasets.synth_digits")
    classes = sklearn_mnist_classes()
    for d, stack in classes.items():
        os.makedirs(os.path.join(root, CATEGORY, "MNIST"), exist_ok=True)
        np.save(os.path.join(root, CATEGORY, "MNIST", f"{d}.npy"), stack, allow_pickle=False)
    kinds: dict[str, str] = {}
    for folder, code in (("normal", 1), ("abnormal", 2)):
        for i in range(test):
            kind = None if folder == "normal" else ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
            image, labels = render_digit_sample(classes, kind, np.random.default_rng([seed, code, i]))
            rel = f"{CATEGORY}/test/{folder}/{i:03d}.png"
            save_png(image, os.path.join(root, rel))
            save_png(labels, os.path.join(root, object_labels_path(rel)))
            kinds[f"{folder}/{i:03d}.png"] = kind or "normal"
    with open(os.path.join(root, CATEGORY, "test", "anomaly_kinds.json"), "w") as fh:
        json.dump(kinds, fh, indent=1, sort_keys=True)
        fh.write("\n")
    write_digitanatomy_train(root, count=train, seed=seed)
    return kinds
