"""MVTec LOCO AD loader (official layout) and its ground-truth "channels"::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
    <root>/<category>/ground_truth/{logical_anomalies,structural_anomalies}/NNN/000.png, 001.png, ...
    <root>/<category>/defects_config.json

A category is any non-hidden subfolder of ``root`` holding ``train/``, ``validation/`` or ``test/``.
Images in ``good`` get label 0 and no mask; any other folder gets label 1 and
``mask_path = <root>/<category>/ground_truth/<defect>/<stem>``: a DIRECTORY of channel PNGs, one defect
per PNG, each holding a single non-zero pixel value that ``defects_config.json`` maps to a defect type
with its sPRO saturation rule. The path is set even when the directory is missing (the channel reader
reports it later). No image is opened by the loader.

``defects_config.json`` is a JSON list of objects ``{"defect_name": str, "pixel_value": int 1..255,
"saturation_threshold": number, "relative_saturation": bool}`` (what the official evaluation script reads
with ``json.load``). Saturation areas follow the official evaluation: relative -> ``int(threshold * area)``
(truncated, i.e. floored for these non-negative values), absolute -> ``min(threshold, area)``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from tasks.datasets.folder import is_hidden, is_image_name, select_categories, to_relpath
from tasks.datasets.image_io import file_sha256, read_label_map
from tasks.datasets.records import DatasetError, ImageError, ImageRecord

SPLITS = ("train", "validation", "test")
DEFECTS_CONFIG = "defects_config.json"
GROUND_TRUTH = "ground_truth"
_CONFIG_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


@dataclass(frozen=True)
class DefectSpec:
    """One entry of ``defects_config.json``.

    defect_name: e.g. ``missing_banana``; pixel_value: 1..255, the value of this defect's channel PNGs;
    saturation_threshold: a fraction in (0, 1] of the defect area when ``relative_saturation`` is true,
    otherwise a whole number of pixels >= 1.
    """

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool


def defects_config_path(root: str, category: str) -> str:
    """``<root>/<category>/defects_config.json`` (absolute)."""
    return os.path.join(os.path.abspath(root), category, DEFECTS_CONFIG)


def find_categories(root: str) -> list[str]:
    """Sorted names of non-hidden subfolders of ``root`` that hold ``train/``, ``validation/`` or ``test/``."""
    try:
        names = os.listdir(root)
    except OSError as exc:
        raise DatasetError(f"cannot list dataset root {root}: {exc.strerror or exc}") from None
    return sorted(name for name in names
                  if not is_hidden(name) and os.path.isdir(os.path.join(root, name))
                  and any(os.path.isdir(os.path.join(root, name, s)) for s in SPLITS))


def _subdirs(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if not is_hidden(n) and os.path.isdir(os.path.join(path, n)))


def _image_names(path: str) -> list[str]:
    # a folder named like an image is listed too, so the run reports it as a failed item
    return sorted(n for n in os.listdir(path) if is_image_name(n)
                  and (os.path.isfile(os.path.join(path, n)) or os.path.isdir(os.path.join(path, n))))


def load_loco(root: str, categories: list[str] | None = None, split: str = "test") -> list[ImageRecord]:
    """Records of ``split`` (``train``, ``validation`` or ``test``) for the chosen categories, sorted by relpath.

    label 0 and ``defect_type="good"`` for ``good``; label 1, the folder name as ``defect_type`` and the
    ground-truth directory as ``mask_path`` for any other folder. ``DatasetError`` for an unknown split or
    category.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for MVTec LOCO AD; expected one of {', '.join(SPLITS)}")
    root_abs = os.path.abspath(root)
    chosen = select_categories(find_categories(root_abs), categories, root)
    records = []
    for cat in chosen:
        split_dir = os.path.join(root_abs, cat, split)
        for defect in _subdirs(split_dir):
            for name in _image_names(os.path.join(split_dir, defect)):
                path = os.path.join(split_dir, defect, name)
                if defect == "good":
                    label, gt_dir = 0, None
                else:
                    label = 1
                    gt_dir = os.path.join(root_abs, cat, GROUND_TRUTH, defect, name.rsplit(".", 1)[0])
                records.append(ImageRecord(path=path, relpath=to_relpath(path, root_abs), category=cat,
                                           split=split, label=label, defect_type=defect, mask_path=gt_dir))
    return sorted(records, key=lambda r: r.relpath)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_entry(path: str, index: int, entry) -> DefectSpec:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} is a {type(entry).__name__}, expected an object with keys "
                           f"{', '.join(_CONFIG_KEYS)}")
    if isinstance(entry.get("defect_name"), str):
        where += f" ({entry['defect_name']!r})"
    missing = [k for k in _CONFIG_KEYS if k not in entry]
    if missing:
        raise DatasetError(f"{where} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    name, value = entry["defect_name"], entry["pixel_value"]
    threshold, relative = entry["saturation_threshold"], entry["relative_saturation"]
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"{where}: defect_name must be a non-empty string, got {name!r}")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 255:
        raise DatasetError(f"{where}: pixel_value must be an integer from 1 to 255, got {value!r}")
    if not isinstance(relative, bool):
        raise DatasetError(f"{where}: relative_saturation must be true or false, got {relative!r}")
    if not _is_number(threshold):
        raise DatasetError(f"{where}: saturation_threshold must be a number, got {threshold!r}")
    if relative:
        if not 0.0 < threshold <= 1.0:
            raise DatasetError(f"{where}: relative saturation_threshold must lie in (0, 1], got {threshold!r}")
        threshold = float(threshold)
    else:
        if threshold < 1 or float(threshold) != int(threshold):
            raise DatasetError(f"{where}: absolute saturation_threshold must be a whole number of pixels >= 1, "
                               f"got {threshold!r}")
        threshold = int(threshold)
    return DefectSpec(defect_name=name, pixel_value=value, saturation_threshold=threshold,
                      relative_saturation=relative)


def read_defects_config(path: str) -> dict[int, DefectSpec]:
    """Parse an official ``defects_config.json`` -> ``{pixel_value: DefectSpec}`` in file order.

    ``DatasetError`` naming the file and the reason for: a missing or unreadable file, invalid JSON, a
    top level that is not a non-empty list, an entry lacking a key or holding a bad value, a duplicate
    pixel value. Keys beyond the four official ones are ignored.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: defects config not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read defects config ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of defect entries, got a {type(data).__name__}")
    if not data:
        raise DatasetError(f"{path}: lists no defects")
    specs: dict[int, DefectSpec] = {}
    for index, entry in enumerate(data):
        spec = _parse_entry(path, index, entry)
        if spec.pixel_value in specs:
            raise DatasetError(f"{path}: pixel_value {spec.pixel_value} is used twice "
                               f"({specs[spec.pixel_value].defect_name!r} and {spec.defect_name!r})")
        specs[spec.pixel_value] = spec
    return specs


def _channel_names(gt_dir: str) -> list[str]:
    """Sorted ``*.png`` names in ``gt_dir`` (case-sensitive, hidden files skipped, as the official glob);
    ``ImageError`` when the directory is missing, not a directory, or holds no PNG."""
    if not os.path.exists(gt_dir):
        raise ImageError(gt_dir, "ground-truth directory not found")
    if not os.path.isdir(gt_dir):
        raise ImageError(gt_dir, "ground truth must be a directory of channel PNGs, found a file")
    try:
        names = sorted(n for n in os.listdir(gt_dir) if n.endswith(".png") and not is_hidden(n))
    except OSError as exc:
        raise ImageError(gt_dir, f"cannot list ground-truth directory: {exc.strerror or exc}") from None
    if not names:
        raise ImageError(gt_dir, "ground-truth directory holds no channel PNGs (*.png)")
    return names


def read_loco_channels(gt_dir: str, expected_hw: tuple[int, int], defects: dict[int, DefectSpec], *,
                       root: str | None = None) -> list[tuple[np.ndarray, DefectSpec]]:
    """Read every channel PNG of one anomalous image, in name order.

    gt_dir: ``ground_truth/<kind>/<stem>``; expected_hw: ``(H, W)`` of the image; defects: from
    :func:`read_defects_config`; root: when given, every PNG must resolve inside it.
    Returns ``[(mask H x W bool, spec), ...]``, one per PNG, ``mask`` = the pixels holding the channel's
    single non-zero value. ``ImageError(path, reason)`` naming the directory or the PNG for: a missing or
    empty directory, a size different from the image, more than one distinct non-zero value, a value
    absent from ``defects``, an all-zero channel, and any unreadable file.
    """
    channels = []
    for name in _channel_names(gt_dir):
        path = os.path.join(gt_dir, name)
        try:
            values = read_label_map(path, expected_hw, root=root)
        except ImageError as exc:
            raise ImageError(exc.path, exc.reason.replace("label map", "ground-truth channel", 1)) from None
        nonzero = np.unique(values[values != 0])
        if nonzero.size == 0:
            raise ImageError(path, "channel is all zero (a channel PNG must mark one defect)")
        if nonzero.size > 1:
            shown = ", ".join(str(int(v)) for v in nonzero[:8]) + (", ..." if nonzero.size > 8 else "")
            raise ImageError(path, f"holds {nonzero.size} distinct non-zero values ({shown}); "
                                   "a channel PNG must hold exactly one")
        value = int(nonzero[0])
        spec = defects.get(value)
        if spec is None:
            known = ", ".join(str(v) for v in sorted(defects, reverse=True))
            raise ImageError(path, f"pixel value {value} is not in {DEFECTS_CONFIG} (known: {known})")
        channels.append((values == value, spec))
    return channels


def saturation_area(defect_area: int, spec: DefectSpec) -> int:
    """Pixels of a defect that must be covered for sPRO 1, as the official evaluation computes it.

    relative: ``int(saturation_threshold * defect_area)`` (float product, then truncated toward zero;
    can be 0 for a tiny defect, as in the official code); absolute: ``min(saturation_threshold, defect_area)``.
    """
    defect_area = int(defect_area)
    if spec.relative_saturation:
        return int(float(spec.saturation_threshold) * defect_area)
    return int(min(int(spec.saturation_threshold), defect_area))


def channels_sha256(gt_dir: str) -> str:
    """One hex sha256 over the sorted ``(name, sha256 of bytes)`` of the channel PNGs of ``gt_dir``,
    for cache keys. ``ImageError`` when the directory is missing or holds no PNG."""
    digest = hashlib.sha256()
    for name in _channel_names(gt_dir):
        digest.update(f"{name}\0{file_sha256(os.path.join(gt_dir, name))}\n".encode())
    return digest.hexdigest()
