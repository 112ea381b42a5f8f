"""Synthetic MVTec-layout datasets: layout, masks, determinism, and reading back."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tasks.datasets import load_dataset, read_image, read_mask
from tasks.datasets.synth import DEFECTS, category_names, render_sample, write_synthetic_mvtec

SIZE = 64


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    names = write_synthetic_mvtec(root, categories=3, images=8, seed=0, size=SIZE)
    return root, names


def test_names_cycle():
    assert category_names(4) == ["synth_texture", "synth_object", "synth_multi", "synth_texture2"]
    assert category_names(7)[-1] == "synth_texture3"


def test_layout(synth_root):
    root, names = synth_root
    assert names == ["synth_texture", "synth_object", "synth_multi"]
    for name in names:
        cat = os.path.join(root, name)
        assert sorted(os.listdir(os.path.join(cat, "train", "good"))) == [f"{i:03d}.png" for i in range(8)]
        assert sorted(os.listdir(os.path.join(cat, "test", "good"))) == ["000.png", "001.png"]
        # 6 defective images cycle through the four kinds: 2, 2, 1, 1
        for defect, n in zip(DEFECTS, (2, 2, 1, 1)):
            imgs = sorted(os.listdir(os.path.join(cat, "test", defect)))
            masks = sorted(os.listdir(os.path.join(cat, "ground_truth", defect)))
            assert imgs == [f"{i:03d}.png" for i in range(n)]
            assert masks == [f"{i:03d}_mask.png" for i in range(n)]
        assert not os.path.exists(os.path.join(cat, "ground_truth", "good"))
        assert sorted(os.listdir(os.path.join(cat, "ground_truth"))) == sorted(DEFECTS)


def test_masks_match_images(synth_root):
    root, names = synth_root
    for name in names:
        for defect in DEFECTS:
            d = os.path.join(root, name, "test", defect)
            for f in os.listdir(d):
                img = read_image(os.path.join(d, f))
                assert img.shape == (SIZE, SIZE, 3)
                mpath = os.path.join(root, name, "ground_truth", defect, f[:-4] + "_mask.png")
                with Image.open(mpath) as m:
                    assert m.mode == "L" and m.size == (SIZE, SIZE)
                    values = set(np.unique(np.asarray(m)).tolist())
                assert values == {0, 255}
                mask = read_mask(mpath, img.shape[:2])
                # non-empty, and away from the borders (fully inside the image)
                assert 0 < mask.sum() < 0.5 * SIZE * SIZE
                assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_mask_is_exactly_the_changed_pixels():
    for ci in range(3):
        for defect in DEFECTS:
            for k in range(3):
                clean, image, mask = render_sample(ci, defect, seed=5, sample_index=k, size=SIZE)
                assert mask.any()
                assert np.array_equal(np.any(clean != image, axis=2), mask), (ci, defect, k)
        clean, image, mask = render_sample(ci, None, seed=5, size=SIZE)
        assert np.array_equal(clean, image) and not mask.any()


def test_defects_visible_to_a_simple_method():
    """Nearest normal training image, per-pixel difference: far larger inside the mask."""
    for ci in range(3):
        train = np.stack([render_sample(ci, None, seed=0, sample_index=i, split="train", size=SIZE)[1]
                          for i in range(8)]).astype(int)
        for defect in DEFECTS:
            _, image, mask = render_sample(ci, defect, seed=0, size=SIZE)
            diff = np.abs(train - image.astype(int)).sum(axis=3)
            nearest = diff[diff.reshape(len(train), -1).mean(axis=1).argmin()]
            assert nearest[mask].mean() > 3 * nearest[~mask].mean(), (ci, defect)


def test_kinds_look_different(synth_root):
    root, names = synth_root
    tex = read_image(os.path.join(root, "synth_texture", "train", "good", "000.png")).astype(float)
    obj = read_image(os.path.join(root, "synth_object", "train", "good", "000.png")).astype(float)
    # texture varies everywhere; the object image has a flat background corner
    assert tex[:8, :8].std() > 10 and obj[:8, :8].std() < 8
    assert np.abs(obj[SIZE // 2, SIZE // 2] - obj[2, 2]).sum() > 60


def test_determinism(tmp_path, synth_root):
    root, _ = synth_root
    again = str(tmp_path / "again")
    write_synthetic_mvtec(again, categories=3, images=8, seed=0, size=SIZE)
    a, b = _files(root), _files(again)
    assert a.keys() == b.keys() and a == b
    other = str(tmp_path / "other")
    write_synthetic_mvtec(other, categories=3, images=8, seed=1, size=SIZE)
    c = _files(other)
    assert c.keys() == a.keys()
    changed = [k for k in a if k.endswith(".png") and a[k] != c[k]]
    assert len(changed) > 0.9 * sum(k.endswith(".png") for k in a)


def test_rewrite_and_refuse_foreign_dir(tmp_path):
    out = str(tmp_path / "d")
    write_synthetic_mvtec(out, categories=1, images=8, seed=0, size=SIZE)
    stale = os.path.join(out, "synth_texture", "test", "good", "099.png")
    open(stale, "wb").write(b"old")
    write_synthetic_mvtec(out, categories=1, images=4, seed=0, size=SIZE)  # earlier run is replaced
    assert not os.path.exists(stale)
    assert len(load_dataset("mvtec", out)) == 4
    foreign = tmp_path / "f" / "synth_texture"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_synthetic_mvtec(str(tmp_path / "f"), categories=1, images=2, size=SIZE)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_small_counts(tmp_path):
    out = str(tmp_path / "s")
    write_synthetic_mvtec(out, categories=1, images=2, seed=3, size=48)
    recs = load_dataset("mvtec", out)
    assert [(r.defect_type, r.label) for r in recs] == [("good", 0), ("scratch", 1)]
    with pytest.raises(ValueError):
        write_synthetic_mvtec(out, categories=0)


def test_mvtec_loader_reads_it_back(synth_root):
    root, names = synth_root
    recs = load_dataset("mvtec", root)
    assert len(recs) == 24 and sorted({r.category for r in recs}) == sorted(names)
    assert sum(r.label == 0 for r in recs) == 6 and sum(r.label == 1 for r in recs) == 18
    for r in recs:
        assert (r.defect_type == "good") == (r.label == 0)
        assert (r.mask_path is None) == (r.label == 0)
        if r.mask_path:
            assert os.path.isfile(r.mask_path)
            assert read_mask(r.mask_path, (SIZE, SIZE), root=root).any()
        assert read_image(r.path, root=root).shape == (SIZE, SIZE, 3)
    assert len(load_dataset("mvtec", root, split="train")) == 24
