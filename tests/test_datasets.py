"""Dataset loaders: MVTec AD, VisA (split csv) and plain folders, through load_dataset."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tasks.datasets import DatasetError, load_dataset
from tasks.datasets.mvtec import find_categories


def _img(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    for rel in ["bottle/train/good/000.png", "bottle/train/good/001.png",
                "bottle/test/good/000.png", "bottle/test/broken/001.png", "bottle/test/broken/000.png",
                "zipper/test/good/000.png", "zipper/test/rough/000.png",
                ".hidden/test/good/000.png", "bottle/test/broken/.000.png"]:
        _img(str(root / rel))
    for rel in ["bottle/ground_truth/broken/000_mask.png", "zipper/ground_truth/rough/000_mask.png"]:
        _img(str(root / rel), 255)
    _touch(str(root / "bottle/test/broken/notes.txt"))
    _touch(str(root / "readme.txt"))
    _touch(str(root / "docs/index.md"))  # no train/ or test/: not a category
    return str(root)


def test_mvtec_test_split(mvtec_root):
    recs = load_dataset("mvtec", mvtec_root)
    assert [r.relpath for r in recs] == [
        "bottle/test/broken/000.png", "bottle/test/broken/001.png", "bottle/test/good/000.png",
        "zipper/test/good/000.png", "zipper/test/rough/000.png"]
    assert [r.label for r in recs] == [1, 1, 0, 0, 1]
    assert [r.defect_type for r in recs] == ["broken", "broken", "good", "good", "rough"]
    assert {r.category for r in recs} == {"bottle", "zipper"}
    assert all(r.split == "test" and os.path.isabs(r.path) and os.path.isfile(r.path) for r in recs)
    assert recs[0].mask_path == os.path.join(os.path.abspath(mvtec_root), "bottle", "ground_truth", "broken", "000_mask.png")
    assert recs[2].mask_path is None and recs[3].mask_path is None
    assert recs[0].stem == "000"


def test_mvtec_missing_mask_still_yields_record(mvtec_root):
    rec = [r for r in load_dataset("mvtec", mvtec_root) if r.relpath == "bottle/test/broken/001.png"][0]
    assert rec.label == 1
    assert rec.mask_path.endswith(os.path.join("ground_truth", "broken", "001_mask.png"))
    assert not os.path.exists(rec.mask_path)


def test_mvtec_train_split_and_filter(mvtec_root):
    train = load_dataset("mvtec", mvtec_root, split="train")
    assert [r.relpath for r in train] == ["bottle/train/good/000.png", "bottle/train/good/001.png"]
    assert all(r.split == "train" and r.label == 0 for r in train)
    zipper = load_dataset("mvtec", mvtec_root, categories=["zipper"])
    assert [r.relpath for r in zipper] == ["zipper/test/good/000.png", "zipper/test/rough/000.png"]
    assert find_categories(mvtec_root) == ["bottle", "zipper"]


def test_mvtec_unknown_category_lists_found(mvtec_root):
    with pytest.raises(DatasetError) as info:
        load_dataset("mvtec", mvtec_root, categories=["bottle", "cable"])
    msg = str(info.value)
    assert "'cable'" in msg and "found: bottle, zipper" in msg


def test_mvtec_category_without_images_is_empty_error(mvtec_root):
    with pytest.raises(DatasetError, match="no images found under"):
        load_dataset("mvtec", mvtec_root, categories=["zipper"], split="train")


def test_unknown_split(mvtec_root):
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("mvtec", mvtec_root, split="val")


def test_unknown_kind_and_missing_root(tmp_path, mvtec_root):
    with pytest.raises(DatasetError, match="unknown dataset kind 'kolektor'.*mvtec, visa, loco, digitanatomy, folder"):
        load_dataset("kolektor", mvtec_root)
    with pytest.raises(DatasetError, match="dataset root not found"):
        load_dataset("mvtec", str(tmp_path / "nowhere"))
    _touch(str(tmp_path / "file.txt"))
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("folder", str(tmp_path / "file.txt"))
    assert len(load_dataset("MVTec", mvtec_root)) == 5  # kind is case-insensitive


@pytest.mark.parametrize("kind", ["mvtec", "folder"])
def test_empty_root(tmp_path, kind):
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(str(empty / "sub" / "readme.txt"))
    with pytest.raises(DatasetError) as info:
        load_dataset(kind, str(empty))
    msg = str(info.value)
    assert msg.startswith(f"no images found under {empty} (looked for *.png, *.jpg")


# ---------------------------------------------------------------- VisA

CSV = """object,split,label,image,mask
candle,train,normal,candle/Data/Images/Normal/0001.JPG,
candle,test,normal,candle/Data/Images/Normal/0000.JPG,
candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png
candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png
pcb1,test,anomaly,pcb1\\Data\\Images\\Anomaly\\000.JPG,pcb1\\Data\\Masks\\Anomaly\\000.png
pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,
"""


@pytest.fixture
def visa_root(tmp_path):
    root = tmp_path / "visa"
    _touch(str(root / "split_csv" / "1cls.csv"), CSV)
    return str(root)


def test_visa_test_split(visa_root):
    recs = load_dataset("visa", visa_root)
    assert [r.relpath for r in recs] == [
        "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Images/Anomaly/001.JPG",
        "candle/Data/Images/Normal/0000.JPG", "pcb1/Data/Images/Anomaly/000.JPG"]
    assert [r.label for r in recs] == [1, 1, 0, 1]
    assert [r.defect_type for r in recs] == ["bad", "bad", "good", "bad"]
    assert [r.category for r in recs] == ["candle", "candle", "candle", "pcb1"]
    root = os.path.abspath(visa_root)
    assert recs[0].path == os.path.join(root, "candle", "Data", "Images", "Anomaly", "000.JPG")
    assert recs[0].mask_path == os.path.join(root, "candle", "Data", "Masks", "Anomaly", "000.png")
    assert recs[3].mask_path == os.path.join(root, "pcb1", "Data", "Masks", "Anomaly", "000.png")
    assert recs[2].mask_path is None
    assert recs[0].stem == "000"


def test_visa_train_split_and_filter(visa_root):
    train = load_dataset("visa", visa_root, split="train")
    assert [(r.category, r.label, r.split) for r in train] == [("candle", 0, "train"), ("pcb1", 0, "train")]
    pcb = load_dataset("visa", visa_root, categories=["pcb1"])
    assert [r.relpath for r in pcb] == ["pcb1/Data/Images/Anomaly/000.JPG"]
    with pytest.raises(DatasetError, match=r"'macaroni1'.*found: candle, pcb1"):
        load_dataset("visa", visa_root, categories=["macaroni1"])


def test_visa_missing_csv(tmp_path):
    (tmp_path / "visa").mkdir()
    with pytest.raises(DatasetError, match="split file not found.*1cls.csv"):
        load_dataset("visa", str(tmp_path / "visa"))


def test_visa_bad_rows(tmp_path):
    root = tmp_path / "v"
    _touch(str(root / "split_csv" / "1cls.csv"), "object,split,label,image,mask\ncandle,test,broken,a.JPG,\n")
    with pytest.raises(DatasetError, match="line 2: unknown label 'broken'"):
        load_dataset("visa", str(root))
    _touch(str(root / "split_csv" / "1cls.csv"), "object,split,image\ncandle,test,a.JPG\n")
    with pytest.raises(DatasetError, match="missing column.*label"):
        load_dataset("visa", str(root))
    _touch(str(root / "split_csv" / "1cls.csv"), "object,split,label,image,mask\ncandle,test,normal,/etc/a.JPG,\n")
    with pytest.raises(DatasetError, match="must be relative"):
        load_dataset("visa", str(root))


# ---------------------------------------------------------------- folder

@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "line3"
    for rel in ["b.PNG", "a.jpeg", "cam2/z.bmp", "cam1/x.jpg", "cam1/deep/y.TIFF", "cam1/w.tif",
                ".hidden.png", "cam1/.git/q.png", ".cache/k.png"]:
        _img(str(root / rel)) if rel.lower().endswith((".png", ".tiff", ".tif", ".bmp")) else _touch(str(root / rel))
    _touch(str(root / "notes.txt"))
    _touch(str(root / "cam2" / "image.gif"))
    return str(root)


def test_folder_records(folder_root):
    recs = load_dataset("folder", folder_root)
    assert [r.relpath for r in recs] == [
        "a.jpeg", "b.PNG", "cam1/deep/y.TIFF", "cam1/w.tif", "cam1/x.jpg", "cam2/z.bmp"]
    assert [r.category for r in recs] == ["line3", "line3", "cam1", "cam1", "cam1", "cam2"]
    assert all(r.label is None and r.defect_type == "" and r.split == "test" and r.mask_path is None
               for r in recs)
    assert recs[2].path == os.path.join(os.path.abspath(folder_root), "cam1", "deep", "y.TIFF")


def test_folder_filter_and_errors(folder_root):
    assert [r.relpath for r in load_dataset("folder", folder_root, categories=["cam2"])] == ["cam2/z.bmp"]
    assert len(load_dataset("folder", folder_root, categories=["line3", "cam1"])) == 5
    with pytest.raises(DatasetError, match=r"'cam9'.*found: cam1, cam2, line3"):
        load_dataset("folder", folder_root, categories=["cam9"])
    with pytest.raises(DatasetError, match="only the 'test' split"):
        load_dataset("folder", folder_root, split="train")


def test_folder_loader_does_not_open_images(folder_root):
    # a.jpeg holds text, not JPEG data: listing must still succeed (reading reports it later)
    recs = load_dataset("folder", folder_root, categories=["line3"])
    assert [r.relpath for r in recs] == ["a.jpeg", "b.PNG"]
