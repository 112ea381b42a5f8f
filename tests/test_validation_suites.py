"""Validation tables and suites without a flow: every expectation kind fails on the defect it guards against, names
the offending rows, and passes on good data (GX runs twice for the whole module: one good and one bad table set)."""
from __future__ import annotations

import numpy as np
import pytest

from stores import ItemData
from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem
from tasks.validation import frames
from tasks.validation.baseline import drift_bounds, score_summary
from tasks.validation.gx_stage import referenced_files, run_suites, zip_directory
from tasks.validation.stats_stages import map_summary, pixel_statistics
from tasks.validation.suites import manifest_suite, metrics_suite, outputs_suite

SIZE = (32, 40)   # H, W


def _image(name: str, category: str = "bottle", label: int = 0, mask: str | None = None, split: str = "test"):
    rec = ImageRecord(f"/data/{category}/{split}/{name}.png", f"{category}/{split}/{name}.png", category, split,
                      label, "good" if label == 0 else "crack", mask)
    return ImageItem(f"{name:0>64}"[-64:], rec)


def _stats(rgb: np.ndarray, gt_sizes: list[list[int]] | None = None, mode: str = "RGB") -> ItemData:
    mean, std = pixel_statistics(rgb)
    return ItemData({"mean": mean, "std": std, "size": np.array(rgb.shape[:2], np.int32)},
                    {"mode": mode, "channels": 3, "gt": {"present": bool(gt_sizes), "sizes": gt_sizes or []}})


def _textured(seed: int, hw=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _dataset(defects: bool):
    """(entries, image stats, outputs rows): 2 categories x (3 good + 2 anomalous) test images, plus the defects."""
    entries, stats, maps, images = [], {}, {}, []
    rng = np.random.default_rng(0)
    for c, category in enumerate(("bottle", "screw")):
        for n in range(5):
            label = int(n >= 3)
            item = _image(f"{category}{n}", category, label, f"/gt/{category}{n}.png" if label else None)
            entries.append(frames.Entry("score", "mvtec", item.record, item, None))
            stats[item.image_id] = _stats(_textured(10 * c + n), [list(SIZE)] if label else None)
            amap = rng.random((16, 16)).astype(np.float32)
            maps[item.image_id] = map_summary(amap)
            images.append({"id": item.image_id, "path": item.record.path, "category": category, "label": label,
                           "score": float(0.2 + 0.1 * n + 0.05 * c)})
    if defects:
        blank = entries[0].item.image_id
        stats[blank] = _stats(np.full((*SIZE, 3), 128, np.uint8))                        # a blank image
        stats[entries[1].item.image_id] = _stats(_textured(99, (64, 64)))                 # a size outlier
        stats[entries[2].item.image_id] = _stats(_textured(98), mode="L")                 # another mode
        twin = entries[5].item                                                            # a duplicate file
        dup = ImageItem(twin.image_id, ImageRecord("/data/screw/test/copy.png", "screw/test/copy.png", "screw",
                                                   "test", 0, "good"))
        entries.append(frames.Entry("score", "mvtec", dup.record, dup, None))
        stats[entries[3].item.image_id] = _stats(_textured(3), None)                      # mask missing
        stats[entries[4].item.image_id] = _stats(_textured(4), [[16, 16]])                # mask of another size
        gone = _image("unreadable", "screw")
        entries.append(frames.Entry("score", "mvtec", gone.record, None, "not an image: cannot identify image file"))
        nan_map = np.ones((16, 16), np.float32)
        nan_map[3, 3] = np.nan
        maps[entries[6].item.image_id] = map_summary(nan_map)                            # a NaN map
        maps[entries[7].item.image_id] = map_summary(np.ones((8, 8), np.float32))       # a map of the wrong size
        images[8]["score"] = float("nan")                                                 # a NaN score
    return entries, stats, maps, images


def _run(tmp_path, defects: bool):
    entries, stats, maps, images = _dataset(defects)
    items = {e.item.image_id: e.item for e in entries if e.item}
    baseline = score_summary("saa", _dataset(False)[3])
    if defects:   # this run's screw scores moved up by 0.5: a drift
        images = [dict(i, score=i["score"] + 0.5) if i["category"] == "screw" and i["score"] == i["score"] else i
                  for i in images]
    tables = {"manifest": frames.manifest_columns(entries, stats, {}),
              "outputs": frames.outputs_columns(images, items, maps, stats, 16),
              "metrics": frames.metrics_columns({"bottle": {"image_auroc": 0.9, "pixel_auroc": 0.95},
                                                 "screw": {"image_auroc": 0.4 if defects else 0.8,
                                                           "pixel_auroc": None},
                                                 "mean": {"image_auroc": 0.65, "pixel_auroc": 0.95}})}
    expected = {"bottle": {"test": 5}, "screw": {"test": 5, "train": 3}} if defects else None
    suites = [manifest_suite(frames.count_groups(entries), expected),
              outputs_suite("category_minmax", True, baseline, ["bottle", "screw"]),
              metrics_suite((("image_auroc", 0.6 if defects else 0.5),))]
    return run_suites(tables, [s.as_dict() for s in suites], str(tmp_path / "docs"))


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("good")


@pytest.fixture(scope="module")
def good(good_dir):
    return _run(good_dir, defects=False)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("bad"), defects=True)


def _find(result: dict, suite: str, column: str | None, contains: str = "") -> dict:
    hits = [e for e in result["suites"][suite]["expectations"]
            if e["column"] == column and contains in e["description"]]
    assert len(hits) == 1, (suite, column, contains, [e["description"] for e in hits])
    return hits[0]


def test_good_data_passes_every_expectation(good):
    failed = [(s, e["description"]) for s, suite in good["suites"].items() for e in suite["expectations"]
              if not e["success"]]
    assert failed == [] and good["success"] is True
    assert {s: r["version"] for s, r in good["suites"].items()} == {"manifest": "1", "outputs": "1", "metrics": "1"}
    drift = [e for e in good["suites"]["outputs"]["expectations"] if "drift" in e["description"]]
    assert len(drift) == 6 and all(e["kwargs"]["row_condition"].startswith("category == ") for e in drift)


@pytest.mark.parametrize("suite, column, contains, examples", [
    ("manifest", "usable", "", ["screw/test/unreadable.png"]),
    ("manifest", "std_max", "", ["bottle/test/bottle0.png"]),
    ("manifest", "size_is_category_mode", "", ["bottle/test/bottle1.png"]),
    ("manifest", "mode_is_category_mode", "", ["bottle/test/bottle2.png"]),
    ("manifest", "id", "", ["screw/test/screw0.png", "screw/test/copy.png"]),
    ("manifest", "gt_present", "", ["bottle/test/bottle3.png"]),
    ("manifest", "gt_size_ok", "", ["bottle/test/bottle4.png"]),
    ("outputs", "map_nonfinite", "", ["screw/test/screw1.png"]),
    ("outputs", "map_height", "", ["screw/test/screw2.png"]),
    ("outputs", "score", "number", ["screw/test/screw3.png"]),
    ("metrics", "value", "image_auroc at least 0.6", ["screw/image_auroc"]),
])
def test_each_defect_fails_its_expectation_and_names_the_row(bad, suite, column, contains, examples):
    found = _find(bad, suite, column, contains)
    assert found["success"] is False
    assert sorted(found["unexpected_examples"]) == sorted(examples)
    assert found["unexpected_count"] == len(examples)


def test_counts_against_the_expected_table(bad, good):
    counts = {e["description"].split(":")[0]: e for e in bad["suites"]["manifest"]["expectations"]
              if e["expectation"] == "expect_table_row_count_to_equal"}
    assert counts["bottle/test"]["success"] is True                       # 5 files
    assert counts["screw/test"]["success"] is False and counts["screw/test"]["observed_value"] == 7
    assert counts["screw/train"]["success"] is False and counts["screw/train"]["observed_value"] == 0
    (default,) = [e for e in good["suites"]["manifest"]["expectations"] if e["column"] == "group"]
    assert default["success"] is True and default["kwargs"]["value_set"] == ["bottle/test", "screw/test"]


def test_drift_against_the_baseline(bad):
    drift = {e["description"]: e for e in bad["suites"]["outputs"]["expectations"] if "drift" in e["description"]}
    assert drift["screw: score mean within the baseline's drift bounds"]["success"] is False
    assert drift["screw: score median within the baseline's drift bounds"]["success"] is False
    assert drift["bottle: score mean within the baseline's drift bounds"]["success"] is True
    assert bad["success"] is False


def test_drift_bounds_follow_the_documented_rule():
    bounds = drift_bounds({"n": 10, "mean": 0.5, "median": 0.4, "std": 0.2})
    assert bounds["mean"] == pytest.approx((0.5 - 0.12, 0.5 + 0.12))   # 0.5 x std + 0.02
    assert bounds["median"] == pytest.approx((0.4 - 0.12, 0.4 + 0.12))
    assert bounds["std"] == pytest.approx((0.08, 0.42))                 # std / 2 - 0.02, std x 2 + 0.02
    assert "std" not in drift_bounds({"n": 1, "mean": 0.5, "median": 0.5, "std": None})


def test_the_summary_ignores_non_finite_scores():
    summary = score_summary("saa", [{"category": "a", "score": 0.2}, {"category": "a", "score": 0.4},
                                    {"category": "a", "score": float("nan")}, {"category": "b", "score": 0.1}])
    assert summary["categories"]["a"] == pytest.approx({"n": 2, "mean": 0.3, "median": 0.3, "std": 0.1414213})
    assert summary["categories"]["b"]["std"] is None


def test_pixel_statistics_match_numpy():
    rgb = _textured(5, (21, 13))
    mean, std = pixel_statistics(rgb)
    flat = rgb.reshape(-1, 3).astype(np.float64)
    assert np.allclose(mean, flat.mean(0), atol=1e-4) and np.allclose(std, flat.std(0), atol=1e-4)


def test_map_summary_counts_non_finite_values():
    amap = np.array([[0.5, np.inf], [np.nan, 0.25]], np.float32)
    summary = map_summary(amap)
    assert summary.arrays["nonfinite"] == 2 and summary.meta == {"min": 0.25, "max": 0.5}
    assert map_summary(np.full((2, 2), np.nan, np.float32)).meta == {"min": None, "max": None}


def test_data_docs_keep_every_page_and_only_the_assets_pages_use(good, good_dir):
    docs = good_dir / "docs"
    kept = referenced_files(str(docs))
    every = [str(p.relative_to(docs)) for p in docs.rglob("*") if p.is_file()]
    assert "index.html" in kept and {f for f in every if f.endswith(".html")} <= set(kept)
    assert len([f for f in kept if f.startswith("validations")]) == 3
    dropped = set(every) - set(kept)
    assert dropped and all(f.startswith("static") for f in dropped)
    assert zip_directory(str(docs)).nbytes < sum((docs / f).stat().st_size for f in every) / 4
