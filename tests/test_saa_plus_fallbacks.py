"""Issue 8, point 6: where the official SAA+ code crashes (or gives NaN), anomflow goes on with a named fallback.
Each one is named in report.json's notes with the images it touched and counted in stages[].detail, on a cold run
and again on a warm run that recomputes nothing. Inputs are crafted so that each case happens exactly where meant."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from tasks.datasets.synth import object_labels_path, write_synthetic_mvtec
from tasks.saa_plus.saliency import saliency_fallbacks
from tests.flow_helpers import run_saa

ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle", "--set", "object_generator=oracle",
          "--set", "eval_resolution=64", "--set", "multi_instance_size=128")   # 64 px images on a 32 x 32 grid


def _edit_labels(data, relpath: str, edit) -> None:
    path = data / object_labels_path(relpath)
    labels = np.asarray(Image.open(path)).copy()
    Image.fromarray(edit(labels).astype(np.uint8)).save(path)


def _add_speck(labels: np.ndarray) -> np.ndarray:
    """A one-pixel object at odd coordinates: a 64 -> 32 nearest resize samples only even ones, so it vanishes."""
    ys, xs = np.nonzero(labels[1::2, 1::2] == 0)
    labels[2 * ys[0] + 1, 2 * xs[0] + 1] = 9
    return labels


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallbacks")
    data = root / "data"
    write_synthetic_mvtec(str(data), categories=3, images=6, seed=3, size=64)
    _edit_labels(data, "synth_object/test/good/000.png", np.zeros_like)                      # no object at all
    _edit_labels(data, "synth_multi/test/good/000.png", lambda a: np.where(a == 1, 1, 0))    # one object of n = 3
    _edit_labels(data, "synth_multi/test/good/001.png", _add_speck)                          # a speck object
    for defect in ("hole", "missing_piece", "scratch", "stain"):                             # only good textures:
        shutil.rmtree(data / "synth_texture" / "test" / defect)                              # every map is 0
        shutil.rmtree(data / "synth_texture" / "ground_truth" / defect)
    entry = {"defect_captions": ["defect"], "filter_word": "", "object_prompt": "object", "object_count": 1,
             "k": 2, "area_threshold": 0.5}
    table = {"dataset": "synth", "categories": {"synth_texture": entry, "synth_object": entry,
                                                "synth_multi": {**entry, "object_count": 3}}}
    (root / "table.yaml").write_text(yaml.safe_dump(table))
    return str(data), str(root / "table.yaml")


def _fallbacks(report: dict) -> dict[str, dict[str, int]]:
    return {s["name"]: {k: v for k, v in s.get("detail", {}).items() if k in _NAMES} for s in report["stages"]
            if any(k in _NAMES for k in s.get("detail", {}))}


_NAMES = ("no_object_box", "object_mask_empty_on_grid", "fewer_than_two_object_masks", "constant_category_maps")


def test_each_fallback_is_named_with_its_images_and_counted(crafted, models_dir, tmp_path, counters):
    data, table = crafted
    store = str(tmp_path / "store")
    code, cold, _ = run_saa(data, store, str(tmp_path / "o1"), models_dir, *ORACLE, "--set",
                            f"expert_table={table}", method="saa-plus")
    assert code == 0
    expected = {"object_boxes": {"no_object_box": 1},
                "saliency_map": {"object_mask_empty_on_grid": 1, "fewer_than_two_object_masks": 1},
                "saa_plus_map": {"constant_category_maps": 2}}
    assert _fallbacks(cold) == expected
    notes = "\n".join(cold["notes"])
    assert "object_boxes: fallback no_object_box on 1 image(s)" in notes and "synth_object/test/good/000.png" in notes
    assert "TypeError" in notes and "NaN" in notes
    assert "fewer_than_two_object_masks on 1 image(s)" in notes and "synth_multi/test/good/000.png" in notes
    assert "object_mask_empty_on_grid on 1 image(s)" in notes and "synth_multi/test/good/001.png" in notes
    assert "category synth_texture: saa_plus_map: fallback constant_category_maps on 2 image(s)" in notes
    counters.reset_counters()
    code, warm, _ = run_saa(data, store, str(tmp_path / "o2"), models_dir, *ORACLE, "--set",
                            f"expert_table={table}", method="saa-plus")
    assert code == 0 and counters.total_calls() == 0
    assert all(s["computed"] == 0 for s in warm["stages"])
    assert _fallbacks(warm) == expected and sorted(warm["notes"]) == sorted(cold["notes"])


def test_saliency_fallback_rule():
    grid = np.zeros((3, 4, 4), bool)
    grid[0, 0, 0] = grid[1, 3, 3] = True
    assert saliency_fallbacks(grid, 1) == []                                   # single-object: never
    assert saliency_fallbacks(grid, 3) == ["object_mask_empty_on_grid"]        # 2 non-empty, 1 empty
    assert saliency_fallbacks(grid[:2], 3) == []
    assert saliency_fallbacks(grid[:1], 2) == ["fewer_than_two_object_masks"]
    assert saliency_fallbacks(np.zeros((0, 4, 4), bool), 2) == ["fewer_than_two_object_masks"]
    assert saliency_fallbacks(None, 2) == ["fewer_than_two_object_masks"]
