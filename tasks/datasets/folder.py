"""Plain folders of production images without ground truth, plus helpers shared by loaders.

Layout: any tree under ``root``; images are found recursively by extension
(``IMAGE_EXTS``, case-insensitive). Hidden files and folders (name starting with ``.``) are
skipped; symlinked folders are not followed. A folder named like an image becomes a record too, so
the run reports it as a failed item. An image's category is its first-level
subfolder name, or the root folder's own name for images directly under ``root``.
Records get ``split="test"``, ``label=None``, ``defect_type=""``, ``mask_path=None``.
No image is opened here.
"""
from __future__ import annotations

import os

from tasks.datasets.records import DatasetError, ImageRecord

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """True for a non-hidden file name with one of ``IMAGE_EXTS`` (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTS)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def to_relpath(path: str, root: str) -> str:
    """``path`` relative to ``root`` with forward slashes."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def select_categories(found: list[str], wanted: list[str] | None, root: str) -> list[str]:
    """Return the sorted categories to load; ``DatasetError`` for a wanted one not found."""
    found = sorted(set(found))
    if wanted is None:
        return found
    if isinstance(wanted, str):
        wanted = [wanted]
    missing = [c for c in dict.fromkeys(wanted) if c not in found]
    if missing:
        listing = ", ".join(found) if found else "(none)"
        raise DatasetError(
            f"unknown categor{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(repr(m) for m in missing)} under {root}; found: {listing}")
    return sorted(set(wanted))


def _walk_images(root: str) -> list[str]:
    """Absolute paths of all non-hidden image-named entries under ``root``, sorted.

    A folder with an image name (``007.png/``) is listed too, so that it is reported per item
    ("is a directory, not an image file") instead of silently skipped; its contents are still walked.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in filenames + dirnames:
            if is_image_name(name):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


def load_folder(root: str, categories: list[str] | None = None, split: str = "test") -> list[ImageRecord]:
    """Records for every image under ``root`` (see module docstring), sorted by relpath.

    split: only ``"test"`` exists for plain folders.
    """
    if split != "test":
        raise DatasetError(f"folder datasets have only the 'test' split, not {split!r}")
    root_abs = os.path.abspath(root)
    root_name = os.path.basename(os.path.normpath(root_abs)) or root_abs
    by_category: dict[str, list[str]] = {}
    for path in _walk_images(root_abs):
        rel = to_relpath(path, root_abs)
        category = rel.split("/", 1)[0] if "/" in rel else root_name
        by_category.setdefault(category, []).append(path)
    chosen = select_categories(list(by_category), categories, root)
    records = [
        ImageRecord(path=path, relpath=to_relpath(path, root_abs), category=cat, split="test",
                    label=None, defect_type="", mask_path=None)
        for cat in chosen for path in by_category[cat]
    ]
    return sorted(records, key=lambda r: r.relpath)
