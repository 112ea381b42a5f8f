"""SAM-LAD end to end on synthetic MVTec LOCO data with tiny models: caching that follows the method (counted
model calls and computed items), LOCO metrics in the report, saved maps, and bad input."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.flow_helpers import run_saa, stage_counts

FAST = ("--set", "mask_generator.points_per_side=6", "--set", "mask_generator.pred_iou_thresh=0.0",
        "--set", "mask_generator.stability_score_thresh=0.0", "--set", "feature_size=112",
        "--set", "upsample_factor=4")
MATCH_STAGES = ("object_matching", "object_scores")


def run(root, store, out, models_dir, *extra, dataset="loco"):
    return run_saa(root, store, out, models_dir, *FAST, *extra, dataset=dataset, method="sam-lad")


@pytest.fixture(scope="module")
def loco_root(tmp_path_factory) -> str:
    from tasks.datasets.synth_loco import write_synthetic_loco

    root = str(tmp_path_factory.mktemp("loco") / "data")
    write_synthetic_loco(root, categories=1, train=4, validation=1, test=6, seed=0, size=(80, 64))
    return root


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_cold_then_warm_run_makes_zero_model_calls(loco_root, models_dir, tmp_path, counters):
    store = str(tmp_path / "store")
    code, first, output = run(loco_root, store, str(tmp_path / "o1"), models_dir, "--save-maps", str(tmp_path / "maps"))
    assert code == 0, output
    assert first["failures"] == [] and first["stand_in_models"] is True
    assert counters.MODEL_CALLS["tiny-sam"] > 0 and counters.MODEL_CALLS["tiny-dinov2"] > 0
    counts = stage_counts(first)
    queries = len(first["images"])
    assert counts["object_matching"] == (queries, 0) and counts["sam_lad_map"] == (queries, 0)
    (category,) = [c for c in first["metrics"] if c != "mean"]
    metrics = first["metrics"][category]
    for key in ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean", "auspro_0.05_mean",
                "auspro_1.0_logical"):
        assert key in metrics and (metrics[key] is None or 0.0 <= metrics[key] <= 1.0), key
    # maps saved at each image's full, non-square size in the layout the official LOCO script reads
    for image in first["images"]:
        rel = os.path.relpath(image["path"], loco_root).split(os.sep)
        saved = tmp_path / "maps" / rel[0] / "test" / rel[2] / (rel[3].rsplit(".", 1)[0] + ".tiff")
        assert tifffile.imread(saved).shape == Image.open(image["path"]).size[::-1]
    counters.reset_counters()
    code, second, _ = run(loco_root, store, str(tmp_path / "o2"), models_dir)
    assert code == 0 and counters.total_calls() == 0 and sum(counters.MODEL_LOADS.values()) == 0
    assert all(computed == 0 for computed, _ in stage_counts(second).values())
    assert [i["score"] for i in second["images"]] == [i["score"] for i in first["images"]]
    assert second["metrics"] == first["metrics"]


def test_matching_parameters_recompute_only_matching_and_scoring(loco_root, models_dir, tmp_path, counters):
    store = str(tmp_path / "store")
    run(loco_root, store, str(tmp_path / "o1"), models_dir)
    for override in ("dustbin_z=0.9", "match_threshold=0.5", "eps=0.1", "dcga_mode=gmp"):
        counters.reset_counters()
        code, report, output = run(loco_root, store, str(tmp_path / override), models_dir, "--set", override)
        assert code == 0, output
        assert counters.total_calls() == 0, override
        counts = stage_counts(report)
        for name in ("dinov2_features", "image_embedding", "sam_automatic_masks", "upsampled_features",
                     "memory_bank", "nearest_references"):
            assert counts[name][0] == 0, (override, name)
        assert counts["object_scores"][0] == len(report["images"]), override


def _references_by_bank(store: str) -> list[dict[str, list[str]]]:
    """Every nearest_references item in the store (one per bank content): {query id: reference ids}."""
    from stores import ArtifactStore

    opened = ArtifactStore(store)
    out = []
    for summary in opened.index.artifacts():
        stage, key = summary.path.split("/", 1)
        if stage != "nearest_references":
            continue
        view = opened.open(opened.ref(stage, key))
        for item in view.items():
            meta = view.meta(item)
            out.append(dict(zip(meta["queries"], meta["references"])))
    return out


def test_adding_one_training_image_rescores_only_queries_whose_references_changed(loco_root, models_dir, tmp_path,
                                                                                  counters):
    root = _copy(loco_root, tmp_path / "data")
    store = str(tmp_path / "store")
    code, first, _ = run(root, store, str(tmp_path / "o1"), models_dir)
    (category,) = [c for c in first["metrics"] if c != "mean"]
    validation = os.path.join(root, category, "validation", "good")
    shutil.copy(os.path.join(validation, sorted(os.listdir(validation))[0]),
                os.path.join(root, category, "train", "good", "added_000.png"))
    counters.reset_counters()
    code, second, output = run(root, store, str(tmp_path / "o2"), models_dir)
    assert code == 0, output
    counts = stage_counts(second)
    assert counts["memory_bank"] == (1, 0) and counts["nearest_references"] == (1, 0)
    assert counters.MODEL_CALLS["tiny-dinov2"] == 1          # the added image's features only
    import hashlib
    added = hashlib.sha256(open(os.path.join(root, category, "train", "good", "added_000.png"), "rb").read()).hexdigest()
    items = _references_by_bank(store)
    assert len(items) == 2
    before, after = sorted(items, key=lambda refs: any(added in r for r in refs.values()))
    changed = sum(before[q] != after[q] for q in after)
    queries = len(second["images"])
    for name in (*MATCH_STAGES, "sam_lad_map"):   # a query whose references did not change keeps its map
        assert counts[name] == (changed, queries - changed), name
    new_references = {r for q in after for r in after[q]} - {r for q in before for r in before[q]}
    assert counts["upsampled_features"][0] == len(new_references)


def test_missing_defects_config_and_bad_channel_lose_nothing_else(loco_root, models_dir, tmp_path):
    root = _copy(loco_root, tmp_path / "data")
    (category,) = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    os.remove(os.path.join(root, category, "defects_config.json"))
    code, report, output = run(root, str(tmp_path / "store"), str(tmp_path / "o"), models_dir)
    assert code == 0, output
    assert any("defects_config.json" in note for note in report["notes"])
    metrics = report["metrics"][category]
    assert metrics["image_auroc_mean"] is not None and metrics["auspro_0.05_mean"] is None


def test_unknown_channel_value_fails_that_image_only(loco_root, models_dir, tmp_path):
    root = _copy(loco_root, tmp_path / "data")
    (category,) = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    gt = os.path.join(root, category, "ground_truth", "logical_anomalies")
    first = sorted(os.listdir(gt))[0]
    channel = os.path.join(gt, first, sorted(os.listdir(os.path.join(gt, first)))[0])
    values = np.asarray(Image.open(channel))
    Image.fromarray(np.where(values > 0, 37, 0).astype(np.uint8)).save(channel)
    code, report, output = run(root, str(tmp_path / "store"), str(tmp_path / "o"), models_dir)
    assert code == 3, output
    (failure,) = report["failures"]
    assert channel in failure["reason"] and "37" in failure["reason"]
    assert report["metrics"][category]["auspro_0.05_mean"] is not None


def test_empty_train_good_fails_that_category_only(tmp_path, models_dir):
    from tasks.datasets.synth_loco import write_synthetic_loco

    root = str(tmp_path / "data")
    names = write_synthetic_loco(root, categories=2, train=3, validation=1, test=5, seed=1, size=(80, 64))
    train = os.path.join(root, names[0], "train", "good")
    for name in os.listdir(train):
        os.remove(os.path.join(train, name))
    code, report, output = run(root, str(tmp_path / "store"), str(tmp_path / "o"), models_dir)
    assert code == 3, output
    failed = {f["path"] for f in report["failures"]}
    assert failed and all(f"/{names[0]}/" in p for p in failed)
    assert all("memory_bank" in f["reason"] and "train/good" in f["reason"] for f in report["failures"])
    assert names[1] in report["metrics"]
    assert json.dumps(report)   # serialisable as written
