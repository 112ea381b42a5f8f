"""Evaluation as a cached stage: warm reruns reuse it, its streamed metrics equal the in-memory exact ones,
maps can stay at each image's own (non-square) size, and an image-score artifact can replace the map maximum."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from stores import ArtifactStore, ItemData, item_key
from tasks import metrics
from tasks.datasets.image_io import file_sha256
from tasks.engine.context import RunContext
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.engine.stage import StageCall, declare_stage
from tasks.report.evaluate import evaluate_categories
from tasks.saa import fusion
from tests.flow_helpers import run_saa, stage_counts

ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle")


def _write_dataset(root, sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """MVTec layout; category -> (H, W): 3 good and 3 defective images with rectangular defects."""
    rng = np.random.default_rng(seed)
    for cat, (h, w) in sizes.items():
        for kind in ("good", "dent"):
            os.makedirs(root / cat / "test" / kind, exist_ok=True)
            for n in range(3):
                hh, ww = (h, w) if n != 2 else (w, h)          # the third image is transposed: two sizes per category
                img = rng.integers(0, 255, (hh, ww, 3), np.uint8)
                Image.fromarray(img).save(root / cat / "test" / kind / f"{n:03d}.png")
                if kind == "dent":
                    mask = np.zeros((hh, ww), np.uint8)
                    y, x = rng.integers(2, hh // 2), rng.integers(2, ww // 2)
                    mask[y:y + hh // 4, x:x + ww // 5] = 255
                    mask[hh - 6:hh - 2, ww - 9:ww - 3] = 255        # a second component
                    os.makedirs(root / cat / "ground_truth" / kind, exist_ok=True)
                    Image.fromarray(mask).save(root / cat / "ground_truth" / kind / f"{n:03d}_mask.png")


def test_native_non_square_maps_are_evaluated_at_each_images_size(tmp_path, models_dir):
    root = tmp_path / "data"
    _write_dataset(root, {"plate": (48, 80)})
    code, report, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, *ORACLE,
                              "--set", "eval_resolution=native", "--set", "fusion=mean",
                              "--save-maps", str(tmp_path / "maps"))
    assert code == 0, report
    scores, labels = [], []
    for image in report["images"]:
        rec = image["path"].split(os.sep)
        saved = tifffile.imread(tmp_path / "maps" / "plate" / "test" / rec[-2] / rec[-1].replace(".png", ".tiff"))
        assert saved.shape == np.asarray(Image.open(image["path"])).shape[:2]     # (48, 80) or (80, 48)
        gt_path = root / "plate" / "ground_truth" / rec[-2] / rec[-1].replace(".png", "_mask.png")
        gt = np.asarray(Image.open(gt_path)) > 0 if gt_path.exists() else np.zeros(saved.shape, bool)
        scores.append(saved.reshape(-1))
        labels.append(gt.reshape(-1))
    # the oracle map is the filled ground-truth box: an independent sklearn computation on the saved native maps
    all_scores, all_labels = np.concatenate(scores), np.concatenate(labels)
    got = report["metrics"]["plate"]
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(all_labels, all_scores), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(all_labels, all_scores), abs=1e-12)
    assert got["pixel_auroc"] > 0.99


def _map_view(store: ArtifactStore, report: dict):
    """The run's anomaly_map artifact."""
    ref = next(store.ref("anomaly_map", a.split("/", 1)[1]) for a in store.run_info(report["run_id"]).artifacts
               if a.startswith("anomaly_map/"))
    return store.open(ref)


def _gt_path(root: str, cat: str, image_path: str) -> str:
    rel = image_path.split(os.sep)
    return os.path.join(root, cat, "ground_truth", rel[-2], rel[-1].replace(".png", "_mask.png"))


def test_streamed_metrics_equal_the_in_memory_exact_metrics_and_a_warm_rerun_reuses_them(
        synth_root, models_dir, tmp_path, counters):
    store_path = str(tmp_path / "s")
    code, cold, _ = run_saa(synth_root, store_path, str(tmp_path / "o1"), models_dir, *ORACLE,
                            "--set", "eval_resolution=64")
    assert code == 0
    store = ArtifactStore(store_path)
    view = _map_view(store, cold)
    categories = sorted({i["category"] for i in cold["images"]})
    for cat in categories:
        images = [i for i in cold["images"] if i["category"] == cat]
        gts = [_gt_path(synth_root, cat, i["path"]) for i in images]
        # oracle boxes read the ground truth, so the map items are keyed on (image, mask hash)
        ids = [item_key(i["id"], f"mask:{file_sha256(gt) if os.path.exists(gt) else 'absent'}")
               for i, gt in zip(images, gts)]
        maps = fusion.minmax_normalise(np.stack([view.read(item).arrays["map"] for item in ids]))
        masks = []
        for gt in gts:
            masks.append(metrics.resize_mask(np.asarray(Image.open(gt)) > 0, 64) if os.path.exists(gt)
                         else np.zeros((64, 64), bool))
        expected = {**metrics.pixel_metrics(maps, np.stack(masks)),
                    **metrics.image_metrics(fusion.image_scores(maps), np.array([i["label"] for i in images]))}
        for key, value in expected.items():
            assert cold["metrics"][cat][key] == pytest.approx(value, abs=1e-9), (cat, key)
        assert [i["score"] for i in images] == pytest.approx(fusion.image_scores(maps).tolist())
    counters.reset_counters()
    code, warm, _ = run_saa(synth_root, store_path, str(tmp_path / "o2"), models_dir, *ORACLE,
                            "--set", "eval_resolution=64")
    assert stage_counts(warm)["category_evaluation"] == (0, len(categories))
    assert warm["metrics"] == cold["metrics"] and [i["score"] for i in warm["images"]] == \
        [i["score"] for i in cold["images"]]


@declare_stage("test_image_score", 1, upstream=("maps",))
def _mean_score(call: StageCall, batch):
    """A per-image score artifact: the map's mean (a stand-in for CLIP's global score)."""
    return [ItemData({"score": np.float32(call.read("maps", w.payload).arrays["map"].mean())}) for w in batch]


def _read_map(view, run, image_id):
    from tasks.engine.runner import image_item
    item = next(i for i in run.alive if i.image_id == image_id)
    return view.read(image_item(view.ref, item)).arrays["map"]


def test_an_image_score_artifact_replaces_the_map_maximum(synth_root, tmp_path):
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    run = start_run.fn(ctx, "test", {}, DatasetSpec("mvtec", synth_root), [])
    from tasks.saa import stages as saa
    boxes = saa.oracle_defect_boxes.run(ctx, run.alive, params={"generator": "oracle", "area_threshold": None})
    from tasks.stages import sam
    masks = sam.refine_boxes.run(ctx, run.alive, params={"refiner": "oracle", "zero_mask_when_empty": True},
                                 upstream={"boxes": boxes.ref}, produces_as="defect_masks")
    maps = saa.anomaly_map.run(ctx, run.alive, params={"fusion": "mean", "top_k": None, "resolution": 32},
                               upstream={"masks": masks.ref})
    scores = _mean_score.run(ctx, run.alive, upstream={"maps": maps.ref})
    by_max = evaluate_categories(ctx, run, maps.ref, 32, "none", None)
    by_artifact = evaluate_categories(ctx, run, maps.ref, 32, "none", None, scores=scores.ref)
    view = ctx.store.open(maps.ref)
    for cat_max, cat_art in zip(by_max, by_artifact):
        for a, b in zip(cat_max.images, cat_art.images):
            amap = _read_map(view, run, a["id"])
            assert a["score"] == pytest.approx(float(amap.max())) and b["score"] == pytest.approx(float(amap.mean()))
        assert cat_max.metrics["pixel_auroc"] == cat_art.metrics["pixel_auroc"]    # pixels unchanged
        labels = np.array([i["label"] for i in cat_art.images])
        assert cat_art.metrics["image_auroc"] == pytest.approx(
            roc_auc_score(labels, [i["score"] for i in cat_art.images]))
