"""MVTec AD loader (official layout)::

    <root>/<category>/train/good/NNN.png
    <root>/<category>/test/<defect_type|good>/NNN.png
    <root>/<category>/ground_truth/<defect_type>/NNN_mask.png   (0/255)

A category is any non-hidden subfolder of ``root`` holding ``train/`` or ``test/``.
Images in ``good`` get label 0 and no mask; any other folder is a defect type with label 1
and ``mask_path = <category>/ground_truth/<defect>/<stem>_mask.png`` even when that file is
missing (the mask reader reports it later). No image is opened here.
"""
from __future__ import annotations

import os

from tasks.datasets.folder import is_hidden, is_image_name, select_categories, to_relpath
from tasks.datasets.records import DatasetError, ImageRecord

SPLITS = ("train", "test")


def find_categories(root: str) -> list[str]:
    """Sorted names of subfolders of ``root`` that contain ``train/`` or ``test/``."""
    try:
        names = os.listdir(root)
    except OSError as exc:
        raise DatasetError(f"cannot list dataset root {root}: {exc.strerror or exc}") from None
    out = []
    for name in names:
        if is_hidden(name) or not os.path.isdir(os.path.join(root, name)):
            continue
        if any(os.path.isdir(os.path.join(root, name, s)) for s in SPLITS):
            out.append(name)
    return sorted(out)


def _list_dir(path: str, dirs: bool) -> list[str]:
    if not os.path.isdir(path):
        return []
    names = []
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if dirs and not is_hidden(name) and os.path.isdir(full):
            names.append(name)
        elif not dirs and is_image_name(name) and (os.path.isfile(full) or os.path.isdir(full)):
            names.append(name)  # a folder named like an image is listed so the run reports it
    return sorted(names)


def load_mvtec(root: str, categories: list[str] | None = None, split: str = "test") -> list[ImageRecord]:
    """Records of ``split`` (``train`` or ``test``) for the chosen categories, sorted by relpath."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for MVTec AD; expected one of {', '.join(SPLITS)}")
    root_abs = os.path.abspath(root)
    chosen = select_categories(find_categories(root_abs), categories, root)
    records = []
    for cat in chosen:
        split_dir = os.path.join(root_abs, cat, split)
        for defect in _list_dir(split_dir, dirs=True):
            for name in _list_dir(os.path.join(split_dir, defect), dirs=False):
                path = os.path.join(split_dir, defect, name)
                if defect == "good":
                    label, mask = 0, None
                else:
                    stem = name.rsplit(".", 1)[0]
                    label = 1
                    mask = os.path.join(root_abs, cat, "ground_truth", defect, f"{stem}_mask.png")
                records.append(ImageRecord(path=path, relpath=to_relpath(path, root_abs),
                                           category=cat, split=split, label=label,
                                           defect_type=defect, mask_path=mask))
    return sorted(records, key=lambda r: r.relpath)
