"""What anomflow's dataset writers share: the marker of a folder they generated, deterministic PNG writing, and
where object labels go. No OpenCV here, so loaders and the engine can import it cheaply."""
from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

MARKER = ".anomflow_synth"
OBJECT_LABELS = "object_labels"   # sidecar folder of object label PNGs (oracle object masks)


def save_png(arr: np.ndarray, path: str) -> None:
    """Write an H x W (x 3) uint8 array as PNG (Pillow, no timestamps: same array, same bytes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def prepare_generated_dir(path: str, what: str) -> None:
    """Empty a folder an earlier writer generated (marked); refuse a non-empty folder without the marker."""
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.isfile(os.path.join(path, MARKER)):
            raise FileExistsError(f"{path} exists and was not written by anomflow; remove it or choose another --out")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, MARKER), "w") as fh:
        fh.write(f"written by {what}\n")


def object_labels_path(relpath: str) -> str:
    """Where the synthetic writers put an image's object labels: ``<cat>/object_labels/<split>/<defect>/<stem>.png``
    for the image ``<cat>/<split>/<defect>/<name>`` (relative to the dataset root; not part of the MVTec layout)."""
    parts = relpath.replace(os.sep, "/").split("/")
    if len(parts) != 4:
        raise ValueError(f"{relpath}: not <category>/<split>/<defect>/<name>")
    category, split, defect, name = parts
    return "/".join((category, OBJECT_LABELS, split, defect, name.rsplit(".", 1)[0] + ".png"))
