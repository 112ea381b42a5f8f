"""Oracle stages (ground-truth boxes, box-filling refiner) make the whole SAA flow exactly predictable."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.flow_helpers import run_saa, stage_counts

ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle", "--set", "eval_resolution=40")


def _dataset(root):
    """Category 'part': two 40x40 images with known defects, one normal image."""
    rng = np.random.default_rng(0)
    cat = root / "part"
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (cat / sub).mkdir(parents=True)
    masks = {}
    m0 = np.zeros((40, 40), bool)
    m0[10:20, 5:15] = True
    m0[30:33, 30:36] = True
    m1 = np.zeros((40, 40), bool)
    m1[0:8, 0:40] = True
    masks["000"], masks["001"] = m0, m1
    for name, m in masks.items():
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(cat / "test/hole" / f"{name}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(cat / "ground_truth/hole" / f"{name}_mask.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(cat / "test/good/000.png")
    return masks


def _maps(maps_dir):
    return {p.parent.name + "/" + p.stem: tifffile.imread(p) for p in maps_dir.rglob("*.tiff")}


def test_oracle_flow_produces_exact_maps_and_perfect_metrics(tmp_path, models_dir, counters):
    masks = _dataset(tmp_path / "d")
    code, report, _ = run_saa(str(tmp_path / "d"), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, *ORACLE,
                              "--set", "normalise=none", "--save-maps", str(tmp_path / "m"))
    assert code == 0 and counters.total_calls() == 0
    assert "image_embedding" not in stage_counts(report)
    maps = _maps(tmp_path / "m")
    np.testing.assert_array_equal(maps["hole/000"], np.where(masks["000"], 0.5, 0.0))   # s / (1 + 1)
    np.testing.assert_array_equal(maps["hole/001"], np.where(masks["001"], 0.5, 0.0))
    np.testing.assert_array_equal(maps["good/000"], np.zeros((40, 40)))                # no box -> zero mask
    metrics = report["metrics"]["part"]
    assert metrics["pixel_auroc"] == 1.0 and metrics["pixel_f1_max"] == 1.0 and metrics["pixel_aupro"] == pytest.approx(1.0)
    assert metrics["image_auroc"] == 1.0
    assert {i["path"].rsplit("/", 2)[-2]: i["score"] for i in report["images"]}["good"] == 0.0


def test_oracle_mean_fusion_and_top_k(tmp_path, models_dir):
    masks = _dataset(tmp_path / "d")
    _, report, _ = run_saa(str(tmp_path / "d"), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, *ORACLE,
                           "--set", "normalise=none", "--set", "fusion=mean", "--set", "top_k=1",
                           "--save-maps", str(tmp_path / "m"))
    maps = _maps(tmp_path / "m")
    # two equal-score boxes, K = 1: the stable argsort keeps the later one (the second component)
    expected = np.zeros((40, 40))
    expected[30:33, 30:36] = 1.0
    np.testing.assert_array_equal(maps["hole/000"], expected)
    np.testing.assert_array_equal(maps["hole/001"], masks["001"].astype(float))


def test_oracle_boxes_refined_by_tiny_sam_give_valid_maps(tmp_path, models_dir, counters):
    _dataset(tmp_path / "d")
    code, report, _ = run_saa(str(tmp_path / "d"), str(tmp_path / "s"), str(tmp_path / "o"), models_dir,
                              "--set", "region_generator=oracle", "--set", "eval_resolution=40",
                              "--save-maps", str(tmp_path / "m"))
    assert code == 0 and counters.MODEL_CALLS["tiny-sam"] > 0 and counters.MODEL_CALLS["tiny-gdino"] == 0
    for m in _maps(tmp_path / "m").values():
        assert m.shape == (40, 40) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert report["stages"][0]["name"] == "image_embedding"
