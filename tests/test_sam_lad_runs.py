"""SAM-LAD end to end beyond the LOCO basics of test_flow_sam_lad.py: DigitAnatomy (Eq. 16 against Eq. 13-15), the
MVTec AD layout, references computed once, SAM stages shared with SAA, object-area calibration (unit and CLI), and
usage errors. Tiny models, small images; every run's store is read back to check the counts the design gives.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import roc_auc_score

from tasks.models import calls
from tasks.sam_lad import objects
from tests.flow_helpers import run_cli, run_saa, stage_counts

SMALL = ("--set", "feature_size=112", "--set", "upsample_factor=4")
# SAM's automatic masks kept cheap and plentiful with tiny-sam: 16 prompts, no score filters, no NMS (48 masks)
AMG = ("--set", "mask_generator.points_per_side=4", "--set", "mask_generator.pred_iou_thresh=0.0",
       "--set", "mask_generator.stability_score_thresh=0.0", "--set", "mask_generator.box_nms_thresh=1.0")
OBJECT_STAGES = ("upsampled_features", "object_descriptors")


# ---------------------------------------------------------------- helpers
def _ids(folder: str) -> list[str]:
    """Image ids (sha256 of the file's bytes) of the PNGs in ``folder``, sorted."""
    return sorted(hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
                  for n in os.listdir(folder) if n.endswith(".png"))


def _artifacts(store: str, stage: str) -> list[tuple[dict, object]]:
    """(record, view) of every artifact of ``stage`` in the store."""
    from stores import ArtifactStore

    opened = ArtifactStore(store)
    return [(s.record, opened.open(opened.ref(*s.path.split("/", 1)))) for s in opened.index.artifacts()
            if s.path.split("/", 1)[0] == stage]


def _references(store: str) -> dict[str, list[str]]:
    """{query id: reference ids} over the store's nearest_references items (one bank per store here)."""
    (_, view), = _artifacts(store, "nearest_references")
    (item,) = list(view.items())
    meta = view.meta(item)
    return dict(zip(meta["queries"], meta["references"]))


def _used(references: dict[str, list[str]]) -> set[str]:
    """Distinct images among the queries and the references they use."""
    return set(references) | {r for refs in references.values() for r in refs}


def _mask_areas(store: str, image_ids) -> list[np.ndarray]:
    """Area fractions (mask pixels / H*W) of the stored SAM automatic masks of each image, in ``image_ids`` order."""
    (_, view), = _artifacts(store, "sam_automatic_masks")
    return [np.array([m.sum() / m.size for m in np.asarray(view.read(i, names=["masks"]).arrays["masks"], bool)],
                     np.float64) for i in image_ids]


def _brute_share(areas: list[np.ndarray], expected: int) -> float:
    """Best share of images with exactly ``expected`` masks in [lo, hi], over every pair of observed areas."""
    values = np.unique(np.concatenate(areas)) if areas else np.zeros(0)
    best = 0
    for i, lo in enumerate(values):
        for hi in values[i:]:
            best = max(best, sum(int(((a >= lo) & (a <= hi)).sum() == expected) for a in areas))
    return best / max(1, len(areas))


def _calls_of(run) -> tuple:
    """Run ``run()`` with zeroed model counters; returns (its result..., model calls, model loads)."""
    calls.reset_counters()
    result = run()
    return (*result, calls.total_calls(), sum(calls.MODEL_LOADS.values()))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> str:
    """An empty models folder: every model is its tiny stand-in."""
    return str(tmp_path_factory.mktemp("models"))


# ---------------------------------------------------------------- 1. DigitAnatomy
@pytest.fixture(scope="module")
def digits(tmp_path_factory, models) -> dict:
    """Eq. 16 then Eq. 13-15 on one store; threshold 0 so that tiny models match some objects."""
    from tasks.datasets.synth_digits import write_synthetic_digitanatomy

    base = tmp_path_factory.mktemp("digits")
    root, store = str(base / "data"), str(base / "store")
    write_synthetic_digitanatomy(root, test=3, train=8, seed=0)
    runs = {}
    for variant in ("unmatched_only", "full"):
        runs[variant] = _calls_of(lambda: run_saa(
            root, store, str(base / variant), models, *SMALL, "--set", "object_source=oracle",
            "--set", "match_threshold=0.0", "--set", f"variant={variant}", dataset="digitanatomy", method="sam-lad"))
    return {"store": store, **runs}


def test_digitanatomy_unmatched_only_gives_image_metrics_only(digits):
    code, report, output, _, _ = digits["unmatched_only"]
    assert code == 0, output
    assert report["failures"] == [] and report["config"]["variant"] == "unmatched_only"
    metrics = report["metrics"]["digitanatomy"]
    labels, scores = [i["label"] for i in report["images"]], [i["score"] for i in report["images"]]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert all(metrics[k] is None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))
    used = len(_used(_references(digits["store"])))
    counts = stage_counts(report)
    for name in ("object_masks", *OBJECT_STAGES):
        assert counts[name] == (used, 0), name
    assert counts["object_scores"] == (6, 0) and counts["sam_lad_map"] == (6, 0)


def test_digitanatomy_variant_switch_recomputes_only_scores_and_map(digits):
    code, report, output, model_calls, loads = digits["full"]
    assert code == 0 and report["failures"] == [], output
    assert model_calls == 0 and loads == 0
    expected = {name: (0, computed) for name, (computed, _) in stage_counts(digits["unmatched_only"][1]).items()}
    expected.update(object_scores=(6, 0), sam_lad_map=(6, 0), category_evaluation=(1, 0), report_figures=(1, 0),
                    map_statistics=(6, 0), validation_results=(1, 0))
    assert stage_counts(report) == expected


def test_digitanatomy_full_adds_the_matched_objects_maps(digits):
    """Eq. 15 - Eq. 16 = the matched objects' maps (non-negative): bounded by their maxima, zero without one."""
    by_variant = {r["params"]["variant"]: v for r, v in _artifacts(digits["store"], "object_scores")}
    (_, matching), = _artifacts(digits["store"], "object_matching")
    items = sorted(matching.items())
    with_matches = 0
    for item in items:
        unmatched = np.asarray(matching.read(item).arrays["unmatched"], bool)
        full, only = (by_variant[v].read(item).arrays for v in ("full", "unmatched_only"))
        np.testing.assert_array_equal(full["object_scores"], only["object_scores"])
        diff = full["map"].astype(np.float64) - only["map"]
        peaks = np.asarray(full["object_scores"], np.float64)[~unmatched]
        if peaks.size == 0:
            assert np.array_equal(full["map"], only["map"]), item
            continue
        with_matches += 1
        tol = 1e-4 * max(1.0, float(np.abs(full["map"]).max()))
        assert diff.min() >= -tol
        assert peaks.max() - tol <= diff.max() <= peaks.sum() + tol
    assert 0 < with_matches
    score = {v: {i["id"]: i["score"] for i in digits[v][1]["images"]} for v in ("full", "unmatched_only")}
    assert all(score["full"][q] >= score["unmatched_only"][q] - 1e-4 * abs(score["full"][q]) for q in score["full"])
    assert sum(score["full"][q] != score["unmatched_only"][q] for q in score["full"]) >= 1
    assert sum(score["full"][q] == score["unmatched_only"][q] for q in score["full"]) >= len(items) - with_matches


# ---------------------------------------------------------------- 2 and 4. MVTec AD layout, stages shared with SAA
@pytest.fixture(scope="module")
def mvtec(tmp_path_factory, models) -> dict:
    """SAA with RGB into SAM, then SAM-LAD, then SAA with its default BGR, all on one store."""
    from tasks.datasets.synth import write_synthetic_mvtec

    base = tmp_path_factory.mktemp("mvtec")
    root, store = str(base / "data"), str(base / "store")
    (category,) = write_synthetic_mvtec(root, categories=1, images=3, seed=0, size=64)
    saa_rgb = run_saa(root, store, str(base / "saa_rgb"), models, "--set", "sam_color_order=rgb")
    sam_lad = run_saa(root, store, str(base / "sam_lad"), models, *SMALL, *AMG, "--save-maps", str(base / "maps"),
                      method="sam-lad")
    saa_bgr = run_saa(root, store, str(base / "saa_bgr"), models)
    return {"root": root, "store": store, "category": category, "maps": str(base / "maps"), "saa_rgb": saa_rgb,
            "sam_lad": sam_lad, "saa_bgr": saa_bgr}


def test_mvtec_layout_pixel_metrics_and_train_good_support(mvtec):
    code, report, output = mvtec["sam_lad"]
    assert code == 0 and report["failures"] == [], output
    category, root = mvtec["category"], mvtec["root"]
    # pixel AUROC over every pixel of the category, from the saved maps and the ground-truth masks
    truth, maps = [], []
    for image in report["images"]:
        defect, name = image["path"].split(os.sep)[-2:]
        stem = name.rsplit(".", 1)[0]
        saved = tifffile.imread(os.path.join(mvtec["maps"], category, "test", defect, stem + ".tiff"))
        gt_path = os.path.join(root, category, "ground_truth", defect, stem + "_mask.png")
        gt = np.asarray(Image.open(gt_path)) > 0 if defect != "good" else np.zeros(saved.shape, bool)
        truth.append(gt.ravel())
        maps.append(saved.ravel())
    pixel_auroc = report["metrics"][category]["pixel_auroc"]
    assert 0.0 <= pixel_auroc <= 1.0
    assert pixel_auroc == pytest.approx(roc_auc_score(np.concatenate(truth), np.concatenate(maps)), abs=1e-6)
    # the support role is train/good, and every reference is one of its images
    train = _ids(os.path.join(root, category, "train", "good"))
    assert report["dataset"]["support_splits"] == ["train"]
    assert report["dataset"]["roles"]["support"] == {"root": root, "images": len(train), "usable": len(train),
                                                     "failures": {}}
    references = _references(mvtec["store"])
    assert set(references) == {i["id"] for i in report["images"]}
    assert {r for refs in references.values() for r in refs} <= set(train)


def test_sam_embeddings_shared_with_saa_only_when_both_feed_rgb(mvtec):
    assert mvtec["saa_rgb"][0] == 0 and mvtec["saa_bgr"][0] == 0
    tests = {i["id"] for i in mvtec["saa_rgb"][1]["images"]}
    used = _used(_references(mvtec["store"]))
    counts = stage_counts(mvtec["sam_lad"][1])
    assert tests <= used
    assert counts["image_embedding"] == (len(used - tests), len(tests))      # only new references are embedded
    assert counts["sam_automatic_masks"] == (len(used), 0)
    # SAA's default BGR embeddings are another artifact: nothing of SAM-LAD's RGB ones is reused
    assert stage_counts(mvtec["saa_bgr"][1])["image_embedding"] == (len(tests), 0)
    orders = sorted(r["params"]["color_order"] for r, _ in _artifacts(mvtec["store"], "image_embedding"))
    assert orders == ["bgr", "rgb"]


# ---------------------------------------------------------------- 3 and 5. LOCO: calibration, then a run
@pytest.fixture(scope="module")
def loco_root(tmp_path_factory) -> str:
    from tasks.datasets.synth_loco import write_synthetic_loco

    root = str(tmp_path_factory.mktemp("loco") / "data")
    write_synthetic_loco(root, categories=1, train=3, validation=1, test=5, seed=0, size=(64, 48))
    return root


def _calibrate(root: str, store: str, out: str, models: str, *extra: str) -> tuple[int, str]:
    return run_cli("calibrate-areas", "sam-lad", "--dataset", "loco", "--root", root, "--store", store,
                   "--out", out, "--models-dir", models, "--allow-tiny", *extra)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, loco_root, models) -> dict:
    """calibrate twice (the second on the cache), then run SAM-LAD with the table on the same store."""
    base = tmp_path_factory.mktemp("calibrated")
    store, table = str(base / "store"), str(base / "T.yaml")
    first = _calls_of(lambda: _calibrate(loco_root, store, table, models, "--expected", "3", *AMG))
    second = _calls_of(lambda: _calibrate(loco_root, store, table, models, "--expected", "3", *AMG))
    run = run_saa(loco_root, store, str(base / "out"), models, *SMALL, *AMG, "--set", f"object_areas={table}",
                  dataset="loco", method="sam-lad")
    return {"store": store, "table": table, "first": first, "second": second, "run": run}


LINE = re.compile(r"^\s+(\S+)\s+areas \[([\d.]+), ([\d.]+)\]\s+([\d.]+)% of (\d+) normal images give (\d+) objects"
                  r"\s+\(objects -> images: (\{.*\})\)$", re.M)


def test_calibrate_sam_lad_end_to_end(calibrated, loco_root):
    code, output, model_calls, _ = calibrated["first"]
    assert code == 0 and model_calls > 0, output
    ((category, lo, hi, percent, images, expected, counts),) = LINE.findall(output)
    train = _ids(os.path.join(loco_root, category, "train", "good"))
    areas = _mask_areas(calibrated["store"], train)
    rule, share = objects.calibrate_bounds(areas, 3)
    assert (int(images), int(expected)) == (len(train), 3)
    assert (lo, hi, percent) == (f"{rule.min_fraction:.5f}", f"{rule.max_fraction:.5f}", f"{100 * share:.1f}")
    assert share == pytest.approx(_brute_share(areas, 3)) and share > 0
    inside = [int(((a >= rule.min_fraction) & (a <= rule.max_fraction)).sum()) for a in areas]
    assert ast.literal_eval(counts) == {n: inside.count(n) for n in sorted(set(inside))}
    loaded = objects.rule_for(objects.load_table(calibrated["table"]), category)
    assert (loaded.min_fraction, loaded.max_fraction, loaded.expected_objects, loaded.whole_image) == \
           (round(rule.min_fraction, 6), round(rule.max_fraction, 6), 3, False)
    code, again, model_calls, loads = calibrated["second"]
    assert code == 0 and model_calls == 0 and loads == 0 and again == output


def test_references_get_objects_once_however_many_queries_use_them(calibrated, loco_root):
    code, report, output = calibrated["run"]
    assert code == 0 and report["failures"] == [], output
    references = _references(calibrated["store"])
    used = _used(references)
    referenced = [r for refs in references.values() for r in refs]
    assert len(referenced) > len(set(referenced))            # some reference serves several queries
    counts, queries = stage_counts(report), len(report["images"])
    for name in OBJECT_STAGES:
        assert counts[name] == (len(used), 0), name
    # the references' SAM stages come from the calibration (same cached stages), the queries' are new
    for name in ("image_embedding", "sam_automatic_masks"):
        assert counts[name] == (queries, len(used) - queries), name
    assert counts["object_matching"] == (queries, 0)
    support = report["dataset"]["roles"]["support"]["images"]
    assert counts["dinov2_features"] == (queries + support, 0)


# ---------------------------------------------------------------- 5. calibrate_bounds and load_table, unit
def test_calibrate_bounds_finds_the_only_interval_with_two_objects_everywhere():
    areas = [np.array([0.001, 0.05, 0.08, 0.6]), np.array([0.002, 0.05, 0.08, 0.7]), np.array([0.05, 0.08, 0.4])]
    rule, share = objects.calibrate_bounds(areas, 2)
    assert share == 1.0 == _brute_share(areas, 2)
    assert rule.min_fraction == pytest.approx(np.sqrt(0.002 * 0.05))     # between 0.002 (excluded) and 0.05
    assert rule.max_fraction == pytest.approx(np.sqrt(0.08 * 0.4))       # between 0.08 and 0.4 (excluded)
    assert rule.expected_objects == 2


def test_calibrate_bounds_breaks_ties_by_the_wider_interval():
    # {0.01} and {0.2} both give one object on both images; {0.2}'s bounds span more (log ratio 9.5 vs 6.3)
    areas = [np.array([0.005, 0.01, 0.2, 0.9]), np.array([0.01, 0.2])]
    rule, share = objects.calibrate_bounds(areas, 1)
    assert share == 1.0
    assert (rule.min_fraction, rule.max_fraction) == pytest.approx((np.sqrt(0.01 * 0.2), np.sqrt(0.2 * 0.9)))


def test_calibrate_bounds_impossible_counts_and_random_sets_against_brute_force():
    rule, share = objects.calibrate_bounds([np.array([0.1, 0.2, 0.3]), np.array([0.1])], 3)
    assert share == 0.5 and (rule.min_fraction, rule.max_fraction) == (0.0, 1.0)
    assert objects.calibrate_bounds([np.array([0.1, 0.2]), np.array([0.3])], 4)[1] == 0.0
    assert objects.calibrate_bounds([], 2)[1] == 0.0
    with pytest.raises(ValueError, match=">= 1"):
        objects.calibrate_bounds([np.array([0.1])], 0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        areas = [np.round(rng.uniform(0.001, 0.9, rng.integers(0, 7)), 3) for _ in range(rng.integers(1, 5))]
        expected = int(rng.integers(1, 4))
        rule, share = objects.calibrate_bounds(areas, expected)
        assert share == pytest.approx(_brute_share(areas, expected))
        hits = [int(((a >= rule.min_fraction) & (a <= rule.max_fraction)).sum() == expected) for a in areas]
        assert np.mean(hits) == pytest.approx(share)


def test_calibrate_bounds_can_exclude_an_empty_mask():
    areas = [np.array([0.0, 0.1, 0.2]), np.array([0.1, 0.2])]
    assert objects.calibrate_bounds(areas, 2)[1] == 1.0 == _brute_share(areas, 2)


@pytest.mark.parametrize("text, says", [
    ("version: 1\ncategories: {a: [", "not valid YAML"),
    ("version: 1\ncategories:\n  bolts: {min_area_fraction: 0.5, max_area_fraction: 0.1}\n", "categories.bolts"),
    ("version: 1\ndefault: {min_area_fraction: 0.1, max_area: 0.5}\n", "unknown key(s) ['max_area']"),
    ("version: 2\n", "version: 1"),
], ids=["bad-yaml", "min-above-max", "unknown-key", "version"])
def test_load_table_errors_name_the_file(tmp_path, text, says):
    path = tmp_path / "areas.yaml"
    path.write_text(text)
    with pytest.raises(objects.ObjectTableError) as caught:
        objects.load_table(path)
    assert str(path) in str(caught.value) and says in str(caught.value)
    with pytest.raises(objects.ObjectTableError, match="nope.yaml"):
        objects.load_table(tmp_path / "nope.yaml")


def test_synthetic_sets_are_recognised(loco_root):
    from tasks.sam_lad.objects import is_synthetic

    assert is_synthetic(loco_root)


# ---------------------------------------------------------------- usage errors
@pytest.mark.parametrize("method, extra, out, says", [
    ("saa", (), "T.yaml", "calibrate-areas knows sam-lad only, not 'saa'"),
    ("sam-lad", ("--expected", "0"), "T.yaml", "--expected 0: needs at least 1 object"),
    ("sam-lad", (), "missing/T.yaml", "missing does not exist"),
], ids=["saa", "expected-0", "out-under-missing-folder"])
def test_calibrate_usage_errors_exit_2_before_any_work(tmp_path, loco_root, models, method, extra, out, says):
    store = tmp_path / "store"
    code, output = run_cli("calibrate-areas", method, *extra, "--dataset", "loco", "--root", loco_root, "--store",
                           str(store), "--out", str(tmp_path / out), "--models-dir", models, "--allow-tiny")
    assert code == 2 and says in output, output
    assert not (tmp_path / out).exists() and not (tmp_path / "missing").exists()
    assert not store.exists()


@pytest.mark.parametrize("store, out", [("store", "missing/T.yaml"), ("missing/store", "T.yaml")])
def test_calibrate_usage_errors_create_nothing(tmp_path, loco_root, models, store, out):
    code, output = _calibrate(loco_root, str(tmp_path / store), str(tmp_path / out), models, "--expected", "3", *AMG)
    assert code == 2 and not (tmp_path / "store").exists() and not (tmp_path / "missing").exists(), output


@pytest.mark.parametrize("override, says", [
    ("object_areas=/nope.yaml", "object area table /nope.yaml"),
    ("object_areas={bad}", "{bad}: categories.synth_breakfast: need 0 <= min_area_fraction <= max_area_fraction"),
    ("upsample_factor=3", "--set upsample_factor"),
    ("match_rule=sometimes", "--set match_rule"),
], ids=["missing-table", "min-above-max", "upsample-factor-3", "match-rule"])
def test_run_sam_lad_usage_errors_exit_2_before_any_work(tmp_path, loco_root, models, override, says):
    store, out, bad = tmp_path / "store", tmp_path / "out", tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncategories:\n  synth_breakfast: {min_area_fraction: 0.4, max_area_fraction: 0.2}\n")
    code, report, output = run_saa(loco_root, str(store), str(out), models, "--set", override.format(bad=bad),
                                   dataset="loco", method="sam-lad")
    assert code == 2 and report == {} and says.format(bad=bad) in output, output
    assert not store.exists() and not out.exists()


# ---------------------------------------------------------------- images on which SAM finds no mask
NO_MASKS = ("--set", "mask_generator.points_per_side=2")   # SAM's default score filters: tiny-sam's masks fail them


def _assert_no_masks(store: str, image_ids) -> None:
    """The premise; pytest.fail (not an AssertionError) so that a broken premise is no expected failure."""
    if any(len(a) for a in _mask_areas(store, image_ids)):
        pytest.fail("premise broken: tiny-sam produced masks under the default filters")


def test_calibrate_counts_zero_objects_on_images_without_sam_masks(tmp_path, loco_root, models):
    store = str(tmp_path / "store")
    code, output = _calibrate(loco_root, store, str(tmp_path / "T.yaml"), models, "--expected", "3", *NO_MASKS)
    (category,) = os.listdir(loco_root)
    _assert_no_masks(store, _ids(os.path.join(loco_root, category, "train", "good")))
    assert code == 0 and " 0.0% of 3 normal images give 3 objects  (objects -> images: {0: 3})" in output, output


def test_run_scores_images_without_sam_masks(tmp_path, loco_root, models):
    store = str(tmp_path / "store")
    code, report, output = run_saa(loco_root, store, str(tmp_path / "out"), models, *SMALL, *NO_MASKS,
                                   dataset="loco", method="sam-lad")
    _assert_no_masks(store, _used(_references(store)))
    assert code == 0 and report["failures"] == [], output
