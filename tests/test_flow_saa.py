"""The SAA flow end to end on synthetic data: caching rules, counted model calls, reports, saved maps."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tifffile

from tests.flow_helpers import run_saa, stage_counts

ALL_STAGES = ["image_embedding", "grounding_detections", "defect_boxes", "defect_masks", "anomaly_map"]


def test_second_identical_run_makes_zero_model_calls(synth_root, models_dir, tmp_path, counters):
    store = str(tmp_path / "store")
    code, first, _ = run_saa(synth_root, store, str(tmp_path / "o1"), models_dir)
    assert code == 0 and first["failures"] == []
    assert counters.MODEL_CALLS["tiny-sam"] > 0 and counters.MODEL_CALLS["tiny-gdino"] > 0
    n = len(first["images"])
    assert stage_counts(first)["image_embedding"] == (n, 0)
    counters.reset_counters()
    code, second, _ = run_saa(synth_root, store, str(tmp_path / "o2"), models_dir)
    assert code == 0
    assert counters.total_calls() == 0 and sum(counters.MODEL_LOADS.values()) == 0
    assert all(stage_counts(second)[s] == (0, n) for s in ALL_STAGES)
    assert [i["score"] for i in second["images"]] == [i["score"] for i in first["images"]]
    assert second["metrics"] == first["metrics"]


def test_late_parameter_recomputes_only_the_map(synth_root, models_dir, tmp_path, counters):
    store = str(tmp_path / "store")
    run_saa(synth_root, store, str(tmp_path / "o1"), models_dir)
    counters.reset_counters()
    code, report, _ = run_saa(synth_root, store, str(tmp_path / "o2"), models_dir, "--set", "fusion=mean")
    assert code == 0 and counters.total_calls() == 0
    n = len(report["images"])
    counts = stage_counts(report)
    assert counts["anomaly_map"] == (n, 0)
    assert all(counts[s] == (0, n) for s in ALL_STAGES[:-1])


def test_box_threshold_change_reuses_detector_and_embeddings(synth_root, models_dir, tmp_path, counters):
    store = str(tmp_path / "store")
    run_saa(synth_root, store, str(tmp_path / "o1"), models_dir)
    counters.reset_counters()
    _, report, _ = run_saa(synth_root, store, str(tmp_path / "o2"), models_dir, "--set", "box_threshold=0.3")
    counts, n = stage_counts(report), len(report["images"])
    assert counts["grounding_detections"] == (0, n) and counts["image_embedding"] == (0, n)
    assert counts["defect_boxes"] == (n, 0) and counts["defect_masks"] == (n, 0)
    assert counters.MODEL_CALLS["tiny-gdino"] == 0


def test_added_images_are_the_only_ones_computed(tmp_path, models_dir, counters):
    folder = tmp_path / "line" / "parts"
    folder.mkdir(parents=True)
    from tasks.datasets.synth import write_synthetic_mvtec

    write_synthetic_mvtec(str(tmp_path / "src"), categories=1, images=6, seed=3, size=96)
    sources = sorted((tmp_path / "src").glob("*/test/*/*.png"))
    for src in sources[:3]:
        shutil.copy(src, folder / f"{src.parent.name}_{src.name}")
    store = str(tmp_path / "store")
    code, first, _ = run_saa(str(tmp_path / "line"), store, str(tmp_path / "o1"), models_dir, dataset="folder")
    assert code == 0 and len(first["images"]) == 3 and first["metrics"] == {}
    for src in sources[3:5]:
        shutil.copy(src, folder / f"{src.parent.name}_{src.name}")
    _, second, _ = run_saa(str(tmp_path / "line"), store, str(tmp_path / "o2"), models_dir, dataset="folder")
    assert len(second["images"]) == 5
    assert all(stage_counts(second)[s] == (2, 3) for s in ALL_STAGES)


def test_swapping_sam_checkpoint_reuses_grounding_boxes(tmp_path, models_dir, counters):
    from tasks.datasets.synth import write_synthetic_mvtec

    write_synthetic_mvtec(str(tmp_path / "d"), categories=1, images=2, seed=1, size=64)
    store = str(tmp_path / "store")
    tiny_detector = ("--set", "models.detector=tiny-gdino")
    run_saa(str(tmp_path / "d"), store, str(tmp_path / "o1"), models_dir, "--set", "models.sam=tiny-sam", *tiny_detector)
    counters.reset_counters()
    code, report, _ = run_saa(str(tmp_path / "d"), store, str(tmp_path / "o2"), models_dir,
                              "--set", "models.sam=sam-vit-b", *tiny_detector, "--random-weights")
    counts, n = stage_counts(report), len(report["images"])
    assert code == 0
    assert counts["grounding_detections"] == (0, n) and counts["defect_boxes"] == (0, n)
    assert counts["image_embedding"] == (n, 0) and counts["defect_masks"] == (n, 0)
    assert counts["anomaly_map"] == (n, 0)
    assert counters.MODEL_CALLS["sam-vit-b"] > 0 and counters.MODEL_CALLS["tiny-gdino"] == 0
    assert {m["name"] for m in report["models"]} == {"sam-vit-b", "tiny-gdino"}
    assert report["warning"] and all(m["random_weights"] for m in report["models"])
    assert next(m for m in report["models"] if m["name"] == "sam-vit-b")["tiny"] is False


def test_save_maps_writes_float32_tiffs_at_each_image_size_in_the_mvtec_layout(synth_root, models_dir, tmp_path):
    """Maps are evaluated at 400 x 400 but saved at each image's own size (96 x 96 here), which the official MVTec
    evaluation requires; an independent evaluation (sklearn on the saved maps and the ground-truth PNGs) runs."""
    from sklearn.metrics import roc_auc_score

    from tasks.datasets.image_io import image_size, read_mask
    from tasks.metrics import image_metrics, pixel_metrics

    maps = tmp_path / "maps"
    code, report, _ = run_saa(synth_root, str(tmp_path / "store"), str(tmp_path / "o"), models_dir,
                              "--save-maps", str(maps))
    assert code == 0 and report["config"]["eval_resolution"] == 400
    saved = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.tiff"))
    expected = sorted(os.path.relpath(i["path"], synth_root).rsplit(".", 1)[0] + ".tiff" for i in report["images"])
    assert saved == expected
    for category in report["dataset"]["categories"]:
        items = [i for i in report["images"] if i["category"] == category]
        arrays, truths = [], []
        for i in items:
            arr = tifffile.imread(maps / (os.path.relpath(i["path"], synth_root).rsplit(".", 1)[0] + ".tiff"))
            hw = image_size(i["path"])
            assert arr.dtype == np.float32 and arr.shape == hw == (96, 96)
            stem, defect = os.path.basename(i["path"]).rsplit(".", 1)[0], i["path"].split("/")[-2]
            gt = os.path.join(synth_root, category, "ground_truth", defect, f"{stem}_mask.png")
            truths.append(read_mask(gt, hw) if i["label"] else np.zeros(hw, bool))
            arrays.append(arr)
        maps_arr, gts = np.stack(arrays), np.stack(truths)
        labels = np.array([i["label"] for i in items])
        ours = {**pixel_metrics(maps_arr, gts, pro=False), **image_metrics(maps_arr.max(axis=(1, 2)), labels)}
        assert ours["pixel_auroc"] == pytest.approx(roc_auc_score(gts.ravel(), maps_arr.ravel()), abs=1e-9)
        assert ours["image_auroc"] == pytest.approx(roc_auc_score(labels, maps_arr.max(axis=(1, 2))), abs=1e-9)


def test_report_schema_and_html(synth_root, models_dir, tmp_path):
    code, report, _ = run_saa(synth_root, str(tmp_path / "store"), str(tmp_path / "o"), models_dir)
    assert code == 0
    for key in ("method", "config", "models", "dataset", "metrics", "images", "failures", "stages", "wall_seconds"):
        assert key in report
    assert report["method"] == "saa" and report["config"]["defect_prompts"] == ["defect"]
    assert set(report["metrics"]) == {"synth_texture", "synth_object", "mean"}
    assert set(report["metrics"]["mean"]) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro",
                                              "image_auroc", "image_ap", "image_f1_max"}
    assert all(set(m) >= {"name", "weights_sha256", "tiny"} for m in report["models"])
    assert "[0, 0.3]" in report["metric_definitions"]["pixel_aupro"]     # which AUPRO
    assert set(report["mean_covers"]) == set(report["metrics"]["mean"])       # each mean says what it averages
    assert report["mean_covers"]["pixel_auroc"] == ["synth_object", "synth_texture"]
    assert all(set(i) == {"id", "path", "category", "label", "score"} for i in report["images"])
    html = open(tmp_path / "o" / "report.html").read()
    assert "Stand-in models" in html and "data:image/png;base64" in html and "image_embedding" in html


def test_store_ls_and_gc_commands_on_a_used_store(synth_root, models_dir, tmp_path):
    from tests.flow_helpers import run_cli

    store = str(tmp_path / "store")
    run_saa(synth_root, store, str(tmp_path / "o1"), models_dir)
    run_saa(synth_root, store, str(tmp_path / "o2"), models_dir, "--set", "fusion=mean")
    code, listing = run_cli("store", "ls", "--store", store)
    # five stages, the SAM mask memo, the evaluation, its report figures and the three validation stages; then the
    # second anomaly_map and what reads it: its evaluation, figures, map statistics and validation results
    assert code == 0 and "16 artifacts" in listing
    assert '"fusion":"mean"' in listing and "image_embedding" in listing
    code, out = run_cli("store", "gc", "--store", store, "--grace-minutes", "0", "--dry-run")
    assert code == 0 and "would remove 0 run records, 0 artifacts" in out  # both runs name every artifact (memo too)
    code, out = run_cli("store", "gc", "--store", store, "--grace-minutes", "0", "--keep-runs", "1")
    assert code == 0 and "removed 1 run records, 5 artifacts" in out and "anomaly_map/" in out
    assert "category_evaluation/" in out and "report_figures/" in out and "validation_results/" in out
    code, listing = run_cli("store", "ls", "--store", store)
    assert "11 artifacts" in listing and '"fusion":"mean"' in listing and "sam_prompt_masks" in listing


def test_synth_command_writes_mvtec_layout(tmp_path):
    from tests.flow_helpers import run_cli

    code, out = run_cli("synth", "--out", str(tmp_path / "d"), "--categories", "3", "--images", "6", "--size", "64")
    assert code == 0 and "synth_multi" in out
    assert len(list((tmp_path / "d").rglob("ground_truth/*/*_mask.png"))) == 3 * 4
