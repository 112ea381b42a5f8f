"""VisA loader, driven by the official split file::

    <root>/<category>/Data/Images/Normal/*.JPG
    <root>/<category>/Data/Images/Anomaly/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png          (non-zero = defect)
    <root>/split_csv/1cls.csv   columns: object,split,label,image,mask

``split`` is ``train``/``test``, ``label`` is ``normal``/``anomaly``; ``image`` and ``mask``
are paths relative to ``root`` (``mask`` empty for normal images). Records keep the csv
image path as relpath (e.g. ``candle/Data/Images/Anomaly/000.JPG``), defect_type ``good``
(label 0) or ``bad`` (label 1). Categories are the csv's ``object`` values. No image is
opened or even stat-ed here.
"""
from __future__ import annotations

import csv
import os

from tasks.datasets.folder import select_categories
from tasks.datasets.records import DatasetError, ImageRecord

SPLIT_CSV = os.path.join("split_csv", "1cls.csv")
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
SPLITS = ("train", "test")


def _clean_rel(value: str, csv_path: str, line: int, column: str) -> str:
    rel = value.strip().replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise DatasetError(f"{csv_path} line {line}: {column} path {value!r} must be relative to the root")
    return rel


def read_split_csv(root: str) -> list[dict[str, str]]:
    """Rows of ``<root>/split_csv/1cls.csv`` as dicts with cleaned values and a ``line`` key."""
    csv_path = os.path.join(root, SPLIT_CSV)
    if not os.path.isfile(csv_path):
        raise DatasetError(f"VisA split file not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in fields]
            if missing:
                raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}; "
                                   f"expected {','.join(COLUMNS)}")
            reader.fieldnames = fields
            rows = []
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                clean = {c: (row.get(c) or "").strip() for c in COLUMNS}
                clean["line"] = str(line)
                rows.append(clean)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{csv_path}: malformed csv ({exc})") from None
    return rows


def load_visa(root: str, categories: list[str] | None = None, split: str = "test") -> list[ImageRecord]:
    """Records of ``split`` for the chosen categories from the split csv, sorted by relpath."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for VisA; expected one of {', '.join(SPLITS)}")
    root_abs = os.path.abspath(root)
    csv_path = os.path.join(root_abs, SPLIT_CSV)
    rows = read_split_csv(root_abs)
    chosen = set(select_categories([r["object"] for r in rows if r["object"]], categories, root))
    records = []
    for row in rows:
        line = int(row["line"])
        if not row["object"] or not row["image"]:
            raise DatasetError(f"{csv_path} line {line}: empty object or image")
        if row["split"].lower() not in SPLITS:
            raise DatasetError(f"{csv_path} line {line}: unknown split {row['split']!r}")
        label = LABELS.get(row["label"].lower())
        if label is None:
            raise DatasetError(f"{csv_path} line {line}: unknown label {row['label']!r} "
                               "(expected normal or anomaly)")
        if row["object"] not in chosen or row["split"].lower() != split:
            continue
        rel = _clean_rel(row["image"], csv_path, line, "image")
        mask = None
        if row["mask"]:
            mask = os.path.normpath(os.path.join(root_abs, _clean_rel(row["mask"], csv_path, line, "mask")))
        records.append(ImageRecord(
            path=os.path.normpath(os.path.join(root_abs, rel)), relpath=rel,
            category=row["object"], split=split, label=label,
            defect_type="bad" if label else "good", mask_path=mask if label else None))
    return sorted(records, key=lambda r: r.relpath)
