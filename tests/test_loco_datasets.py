"""MVTec LOCO and DigitAnatomy: loaders, defects_config / channel reading, sPRO saturation areas, the synthetic
LOCO and DigitAnatomy writers, and ``anomflow synth --layout``."""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from tasks.datasets import DatasetError, ImageError, load_dataset, read_image
from tasks.datasets.digitanatomy import load_mnist_classes, normal_cells, train_command, write_digitanatomy_train
from tasks.datasets.loco import (DefectSpec, channels_sha256, defects_config_path, read_defects_config,
                                 read_loco_channels, saturation_area)
from tasks.datasets.synth import object_labels_path
from tasks.datasets.synth_digits import ANOMALY_KINDS, ZERO_OBJECT_ID, write_synthetic_digitanatomy
from tasks.datasets.synth_loco import write_synthetic_loco

W, H = 160, 128   # non-square on purpose


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _png(path):
    return np.asarray(Image.open(path))


def _json(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def loco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("loco"))
    names = write_synthetic_loco(root, categories=2, train=3, validation=2, test=5, seed=0, size=(W, H))
    return root, names


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits"))
    kinds = write_synthetic_digitanatomy(root, test=8, train=6, seed=0)
    return root, kinds


# ------------------------------------------------------------------ LOCO loader
def test_loco_records_match_the_folders(loco_root):
    root, names = loco_root
    assert names == ["synth_breakfast", "synth_screws"]
    for split in ("train", "validation", "test"):
        expected = {}
        for cat in names:
            for defect in sorted(os.listdir(os.path.join(root, cat, split))):
                for f in os.listdir(os.path.join(root, cat, split, defect)):
                    gt = None if defect == "good" else os.path.join(root, cat, "ground_truth", defect, f[:-4])
                    expected[f"{cat}/{split}/{defect}/{f}"] = (int(defect != "good"), defect, gt)
        recs = load_dataset("loco", root, split=split)
        assert [r.relpath for r in recs] == sorted(expected)
        for r in recs:
            assert (r.label, r.defect_type, r.mask_path) == expected[r.relpath]
            assert r.split == split and r.path == os.path.join(root, r.relpath)
    test = load_dataset("loco", root, categories=["synth_screws"])
    counts = {d: sum(r.defect_type == d for r in test) for d in ("good", "logical_anomalies", "structural_anomalies")}
    assert counts == {"good": 5, "logical_anomalies": 5, "structural_anomalies": 5}
    assert len(load_dataset("loco", root, split="validation")) == 4
    assert all(os.path.isdir(r.mask_path) for r in test if r.label)


def test_loco_usage_errors_name_the_thing(loco_root):
    root, _ = loco_root
    with pytest.raises(DatasetError, match="unknown split 'val'.*train, validation, test"):
        load_dataset("loco", root, split="val")
    with pytest.raises(DatasetError, match="unknown category 'pushpins'.*synth_breakfast, synth_screws"):
        load_dataset("loco", root, categories=["pushpins"])


# ------------------------------------------------------------------ defects_config.json
def test_defects_config_matches_the_json_and_uses_both_saturation_kinds(loco_root):
    root, names = loco_root
    for cat in names:
        path = defects_config_path(root, cat)
        raw = _json(path)
        specs = read_defects_config(path)
        assert list(specs) == [e["pixel_value"] for e in raw]
        for e in raw:
            assert specs[e["pixel_value"]] == DefectSpec(e["defect_name"], e["pixel_value"],
                                                         e["saturation_threshold"], e["relative_saturation"])
        assert {s.relative_saturation for s in specs.values()} == {True, False}


_GOOD = {"defect_name": "missing_banana", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True}


@pytest.mark.parametrize("content, reason", [
    (None, "defects config not found"),
    ("[{\"defect_name\": ", "invalid JSON"),
    (json.dumps({"a": 1}), "expected a JSON list"),
    (json.dumps([]), "lists no defects"),
    (json.dumps([{k: v for k, v in _GOOD.items() if k != "pixel_value"}]), "lacks the key pixel_value"),
    (json.dumps([_GOOD, dict(_GOOD, defect_name="extra")]), "pixel_value 255 is used twice"),
    (json.dumps([dict(_GOOD, saturation_threshold=1.5)]), r"relative saturation_threshold must lie in \(0, 1\]"),
    (json.dumps([dict(_GOOD, saturation_threshold=0.0)]), r"relative saturation_threshold must lie in \(0, 1\]"),
    (json.dumps([dict(_GOOD, saturation_threshold=0, relative_saturation=False)]), "whole number of pixels >= 1"),
    (json.dumps([dict(_GOOD, saturation_threshold=0.5, relative_saturation=False)]), "whole number of pixels >= 1"),
    (json.dumps([dict(_GOOD, pixel_value=300)]), "pixel_value must be an integer from 1 to 255"),
    (json.dumps([dict(_GOOD, relative_saturation="yes")]), "relative_saturation must be true or false"),
])
def test_defects_config_errors_name_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "defects_config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=reason) as info:
        read_defects_config(str(path))
    assert str(path) in str(info.value)


def test_saturation_area_follows_the_official_formula():
    rel = DefectSpec("d", 1, 0.29, True)
    absolute = DefectSpec("d", 2, 120, False)
    for area in (0, 1, 3, 7, 99, 100, 101, 1234):
        assert saturation_area(area, rel) == math.floor(0.29 * area)   # float product, then truncated
        assert saturation_area(area, absolute) == (area if area < 120 else 120)
    assert saturation_area(100, rel) == 28   # 0.29 * 100 = 28.999999999999996 in floating point, as officially
    assert saturation_area(np.int64(10), DefectSpec("d", 3, 1.0, True)) == 10


# ------------------------------------------------------------------ channels
def test_channels_hold_one_value_each_at_image_size(loco_root):
    root, names = loco_root
    seen_overlap = seen_two = False
    for cat in names:
        specs = read_defects_config(defects_config_path(root, cat))
        manifest = _json(os.path.join(root, cat, "anomaly_kinds.json"))
        for r in load_dataset("loco", root, categories=[cat]):
            if not r.label:
                continue
            channels = read_loco_channels(r.mask_path, (H, W), specs, root=root)
            pngs = sorted(os.listdir(r.mask_path))
            assert len(channels) == len(pngs) == len(manifest[r.relpath.split("/", 1)[1]]["defects"])
            assert [s.defect_name for _, s in channels] == manifest[r.relpath.split("/", 1)[1]]["defects"]
            for (mask, spec), name in zip(channels, pngs):
                raw = _png(os.path.join(r.mask_path, name))
                assert raw.shape == mask.shape == (H, W) and mask.dtype == bool
                assert set(np.unique(raw)) == {0, spec.pixel_value}
                assert np.array_equal(mask, raw == spec.pixel_value)
            if len(channels) == 2:
                seen_two = True
                seen_overlap |= bool((channels[0][0] & channels[1][0]).any())
    assert seen_two and seen_overlap


def _gt_dir(tmp_path, arrays):
    d = tmp_path / "ground_truth" / "logical_anomalies" / "000"
    d.mkdir(parents=True)
    for i, arr in enumerate(arrays):
        Image.fromarray(arr.astype(np.uint8)).save(d / f"{i:03d}.png")
    return str(d)


def test_channel_errors_name_the_png(tmp_path):
    specs = {255: DefectSpec("a", 255, 1.0, True), 254: DefectSpec("b", 254, 10, False)}
    ok = np.zeros((6, 8), np.uint8)
    ok[1:3, 2:5] = 255
    with pytest.raises(ImageError, match="ground-truth directory not found") as info:
        read_loco_channels(str(tmp_path / "nope"), (6, 8), specs)
    assert info.value.path == str(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="holds no channel PNGs"):
        read_loco_channels(str(empty), (6, 8), specs)
    unknown = ok.copy()
    unknown[unknown == 255] = 37
    cases = [([ok, np.zeros((6, 9), np.uint8) + 254], "001.png",
              "ground-truth channel size 9x6 differs from image size 8x6"),
             ([ok, unknown], "001.png", r"pixel value 37 is not in defects_config.json \(known: 255, 254\)"),
             ([np.where(ok > 0, 255, 0) + np.eye(6, 8, dtype=np.uint8) * 254 * (ok == 0)], "000.png",
              "2 distinct non-zero values"),
             ([ok, np.zeros((6, 8), np.uint8)], "001.png", "all zero")]
    for i, (arrays, bad, reason) in enumerate(cases):
        d = _gt_dir(tmp_path / str(i), arrays)
        with pytest.raises(ImageError, match=reason) as info:
            read_loco_channels(d, (6, 8), specs)
        assert info.value.path == os.path.join(d, bad)
    d = _gt_dir(tmp_path / "good", [ok])
    (mask, spec), = read_loco_channels(d, (6, 8), specs)
    assert spec.defect_name == "a" and np.array_equal(mask, ok > 0)


def test_channels_sha256_covers_names_and_bytes(tmp_path):
    a = np.zeros((6, 8), np.uint8)
    a[2, 2] = 255
    d = _gt_dir(tmp_path, [a, a])
    expected = hashlib.sha256()
    for name in ("000.png", "001.png"):
        with open(os.path.join(d, name), "rb") as fh:
            expected.update(f"{name}\0{hashlib.sha256(fh.read()).hexdigest()}\n".encode())
    assert channels_sha256(d) == expected.hexdigest()
    a[3, 3] = 255
    Image.fromarray(a).save(os.path.join(d, "001.png"))
    changed = channels_sha256(d)
    assert changed != expected.hexdigest()
    os.rename(os.path.join(d, "001.png"), os.path.join(d, "002.png"))
    assert channels_sha256(d) not in (expected.hexdigest(), changed)
    with pytest.raises(ImageError, match="not found"):
        channels_sha256(str(tmp_path / "missing"))


# ------------------------------------------------------------------ synthetic LOCO content
def test_synthetic_loco_is_deterministic(tmp_path):
    kwargs = dict(categories=2, train=1, validation=1, test=5)
    write_synthetic_loco(str(tmp_path / "a"), seed=3, **kwargs)
    write_synthetic_loco(str(tmp_path / "b"), seed=3, **kwargs)
    write_synthetic_loco(str(tmp_path / "c"), seed=4, **kwargs)
    a, b, c = (_files(str(tmp_path / k)) for k in "abc")
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png") and "/test/" in k]
    assert sum(a[k] != c[k] for k in pngs) > len(pngs) // 2
    assert os.path.isfile(tmp_path / "a" / "synth_breakfast" / ".anomflow_synth")


def _labels(root, relpath):
    return _png(os.path.join(root, object_labels_path(relpath)))


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    return out


def test_object_labels_agree_with_channels(loco_root):
    root, names = loco_root
    for cat in names:
        info = _json(os.path.join(root, cat, "objects.json"))
        assert len(info["objects"]) == info["object_count"] and info["extra_object_id"] == info["object_count"] + 1
        ids = {o["name"]: o["id"] for o in info["objects"]}
        tray = ids["tray"]
        goods = [_labels(root, r.relpath) for r in load_dataset("loco", root, categories=[cat], split="train")]
        for lab in goods:   # every object of the rule is visible in a normal image
            assert sorted(set(np.unique(lab)) - {0}) == list(range(1, info["object_count"] + 1))
        specs = read_defects_config(defects_config_path(root, cat))
        manifest = _json(os.path.join(root, cat, "anomaly_kinds.json"))
        for r in load_dataset("loco", root, categories=[cat]):
            if not r.label:
                continue
            lab = _labels(root, r.relpath)
            entry = manifest[r.relpath.split("/", 1)[1]]
            channels = read_loco_channels(r.mask_path, (H, W), specs)
            objects = entry["objects"] if len(entry["objects"]) == len(channels) else entry["objects"] * len(channels)
            for (mask, spec), obj in zip(channels, objects):
                oid = ids.get(obj, info["extra_object_id"])
                if r.defect_type == "structural_anomalies":   # a defect lies on one object
                    assert set(np.unique(lab[mask])) == {oid}
                elif spec.defect_name in ("extra_object", "wrong_colour"):
                    assert np.array_equal(mask, lab == oid)
                elif spec.defect_name == "missing_object":
                    assert not (lab == oid).any()
                    if cat == "synth_breakfast":   # fixed slots: the GT covers where the object is in normal images
                        assert min(_iou(mask, g == oid) for g in goods) > 0.4
                    else:                          # free positions: the tray shows where it was
                        assert set(np.unique(lab[mask])) == {tray}
                else:
                    assert spec.defect_name == "misplaced_object"
                    new = lab == oid
                    old = mask & ~new
                    assert new.any() and (mask & new).sum() == new.sum() and old.sum() > 0.5 * new.sum()
                    if cat == "synth_breakfast":
                        assert min(_iou(old, g == oid) for g in goods) > 0.4
                    else:                          # taken off the tray: tray where it was, outside the tray now
                        assert set(np.unique(lab[old])) == {tray} and not (new & _bbox(lab == tray)).any()


def test_wrong_colour_changes_the_objects_colour(loco_root):
    root, names = loco_root
    checked = 0
    for cat in names:
        ids = {o["name"]: o["id"] for o in _json(os.path.join(root, cat, "objects.json"))["objects"]}
        manifest = _json(os.path.join(root, cat, "anomaly_kinds.json"))
        good = [r for r in load_dataset("loco", root, categories=[cat]) if not r.label]
        for rel, entry in manifest.items():
            if "wrong_colour" not in entry["defects"]:
                continue
            oid = ids[entry["objects"][entry["defects"].index("wrong_colour")]]
            usual = np.mean([read_image(g.path)[_labels(root, g.relpath) == oid].mean(0) for g in good], 0)
            seen = read_image(os.path.join(root, cat, rel))[_labels(root, f"{cat}/{rel}") == oid].mean(0)
            assert np.abs(seen - usual).sum() > 60
            checked += 1
    assert checked >= 4


# ------------------------------------------------------------------ DigitAnatomy
def _cell_of(mask):
    ys, xs = np.nonzero(mask)
    return int(ys.mean() // 32) * 3 + int(xs.mean() // 32)


def test_digitanatomy_writer_and_loader(digits_root):
    from sklearn.datasets import load_digits

    root, kinds = digits_root
    counts = np.bincount(load_digits().target)
    for d in range(10):
        stack = np.load(os.path.join(root, "digitanatomy", "MNIST", f"{d}.npy"))
        assert stack.shape == (counts[d], 28, 28) and stack.dtype == np.uint8
        assert stack[:, :4].max() == 0 and stack[:, :, -4:].max() == 0 and stack.max() > 200
    recs = load_dataset("digitanatomy", root)
    assert [r.relpath for r in recs] == sorted(f"digitanatomy/test/{k}" for k in kinds)
    assert all(r.mask_path is None and r.category == "digitanatomy" for r in recs)
    assert {(r.defect_type, r.label) for r in recs} == {("good", 0), ("abnormal", 1)}
    assert sum(r.label for r in recs) == 8 and len(recs) == 16
    assert sorted(set(kinds.values())) == sorted(ANOMALY_KINDS + ("normal",))
    img = read_image(recs[0].path)
    assert img.shape == (96, 96, 3) and np.array_equal(img[..., 0], img[..., 2])
    for r in recs:
        lab = _labels(root, r.relpath)
        kind = kinds[r.relpath.split("/", 2)[2]]
        present = sorted(set(np.unique(lab)) - {0})
        if kind == "missing":
            assert len(present) == 8 and ZERO_OBJECT_ID not in present
            blank = 45 - sum(present)      # the missing digit k leaves cell k - 1 black
            r0, c0 = divmod(blank - 1, 3)
            assert _png(r.path)[r0 * 32:(r0 + 1) * 32, c0 * 32:(c0 + 1) * 32].max() == 0
        elif kind == "zero":
            assert ZERO_OBJECT_ID in present and len(present) == 9
        else:
            assert present == list(range(1, 10))
            wrong = [k for k in present if _cell_of(lab == k) != k - 1]
            assert len(wrong) == (2 if kind == "out_of_order" else 0)


def _cells(img):
    return [img[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(3) for c in range(3)]


def test_digitanatomy_anomalies_change_the_normal_grid_as_named(digits_root):
    """Each test grid against the normal grid drawn from the same random stream (stream 1: normal, 2: abnormal)."""
    root, kinds = digits_root
    classes = load_mnist_classes(root)
    for name, kind in kinds.items():
        folder, file = name.split("/")
        expected = [cell for _, cell in normal_cells(classes, np.random.default_rng([0, 1 if folder == "normal" else 2,
                                                                                       int(file[:3])]))]
        actual = _cells(_png(os.path.join(root, "digitanatomy", "test", name)))
        changed = [p for p in range(9) if not np.array_equal(actual[p], expected[p])]
        if kind == "normal":
            assert changed == []
        elif kind == "out_of_order":
            a, b = changed
            assert np.array_equal(actual[a], expected[b]) and np.array_equal(actual[b], expected[a])
        else:
            (p,) = changed
            if kind == "missing":
                assert actual[p].max() == 0
            elif kind == "flipped":
                assert np.array_equal(actual[p], expected[p][:, ::-1]) and p + 1 not in (1, 8)
            else:
                assert kind == "zero"
                assert (_cells(_labels(root, f"digitanatomy/test/{name}"))[p] == ZERO_OBJECT_ID).any()


def test_digitanatomy_train_materialisation(digits_root, tmp_path):
    root, _ = digits_root
    train = load_dataset("digitanatomy", root, split="train")
    assert [r.relpath for r in train] == [f"digitanatomy/train/good/{i:04d}.png" for i in range(6)]
    assert all(r.label == 0 and r.defect_type == "good" for r in train)
    copy = tmp_path / "copy"
    os.makedirs(copy / "digitanatomy" / "test" / "normal")
    os.symlink(os.path.join(root, "digitanatomy", "MNIST"), copy / "digitanatomy" / "MNIST")
    with pytest.raises(DatasetError, match="anomflow synth --layout digitanatomy-train") as info:
        load_dataset("digitanatomy", str(copy), split="train")
    assert train_command(str(copy)) in str(info.value)
    write_digitanatomy_train(str(copy), count=4, seed=0)
    ours, theirs = _files(str(copy / "digitanatomy" / "train")), _files(os.path.join(root, "digitanatomy", "train"))
    assert {k: v for k, v in theirs.items() if k in ours} == ours   # same seed -> same bytes; a prefix of 6
    write_digitanatomy_train(str(copy), count=2, seed=1)
    assert sorted(_files(str(copy / "digitanatomy" / "train"))) == [".anomflow_synth", "good/0000.png", "good/0001.png"]
    assert _files(str(copy / "digitanatomy" / "train"))["good/0000.png"] != ours["good/0000.png"]
    with pytest.raises(DatasetError, match="unknown category 'bottle'"):
        load_dataset("digitanatomy", root, categories=["bottle"])


# ------------------------------------------------------------------ CLI
def test_cli_synth_layouts(tmp_path):
    from typer.testing import CliRunner

    from flows.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--layout", "loco", "--out", str(tmp_path / "loco"), "--categories", "1",
                              "--train", "1", "--validation", "1", "--images", "5", "--width", "96", "--height", "80"])
    assert res.exit_code == 0, res.output
    recs = load_dataset("loco", str(tmp_path / "loco"))
    assert len(recs) == 15 and read_image(recs[0].path).shape == (80, 96, 3)
    res = runner.invoke(app, ["synth", "--layout", "digitanatomy", "--out", str(tmp_path / "d"), "--images", "4",
                              "--train", "2"])
    assert res.exit_code == 0, res.output
    assert len(load_dataset("digitanatomy", str(tmp_path / "d"))) == 8
    res = runner.invoke(app, ["synth", "--layout", "digitanatomy-train", "--out", str(tmp_path / "d"), "--images", "3"])
    assert res.exit_code == 0, res.output
    assert len(load_dataset("digitanatomy", str(tmp_path / "d"), split="train")) == 3
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "m"), "--categories", "1", "--images", "2",
                              "--size", "48"])
    assert res.exit_code == 0, res.output
    assert len(load_dataset("mvtec", str(tmp_path / "m"))) == 2
    for args, needle in ((["--layout", "bogus"], "unknown layout"), (["--validation", "2"], "--validation"),
                         (["--layout", "loco", "--images", "3"], "at least 5")):
        res = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and needle in res.output, res.output
