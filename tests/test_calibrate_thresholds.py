"""`anomflow calibrate METHOD` end to end on a tiny synthetic dataset, then `anomflow run --thresholds`."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from flows.methods import METHODS
from tasks.datasets.synth import write_synthetic_mvtec
from tasks.decisions.thresholds import f1_max_threshold, frr_threshold
from tasks.models import calls
from tests.flow_helpers import run_cli, run_saa

TARGET = 0.34   # of 3 good images per category: one may fail


def _calls_of(run) -> tuple:
    """Run ``run()`` with zeroed model counters; returns (its result..., model calls)."""
    calls.reset_counters()
    result = run()
    return (*result, calls.total_calls())


def _calibrate(root: str, store: str, out: str, models: str, *extra: str) -> tuple[int, str]:
    return run_cli("calibrate", "saa", "--dataset", "mvtec", "--root", root, "--store", store, "--out", out,
                   "--models-dir", models, "--allow-tiny", "--no-progress", "--target-frr", str(TARGET), *extra)


def _scores(report: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """category -> (scores, labels) of a report's images."""
    out: dict[str, list] = {}
    for image in report["images"]:
        out.setdefault(image["category"], []).append((image["score"], image["label"]))
    return {c: (np.array([s for s, _ in v]), np.array([lab for _, lab in v])) for c, v in out.items()}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    """calibrate twice on train/good, run with the thresholds (category min-max and none), calibrate on the
    labelled test split; all on one store."""
    base = tmp_path_factory.mktemp("calibrate")
    root, store, models = str(base / "data"), str(base / "store"), str(base / "models")
    os.makedirs(models)
    write_synthetic_mvtec(root, categories=2, images=3, seed=0, size=64)
    thresholds = str(base / "thresholds.json")
    first = _calls_of(lambda: _calibrate(root, store, thresholds, models))
    first_file = json.load(open(thresholds))
    first_report = json.load(open(str(base / "thresholds-calibration" / "report.json")))
    second = _calls_of(lambda: _calibrate(root, store, thresholds, models))
    runs = {norm: _calls_of(lambda: run_saa(root, store, str(base / norm), models, "--thresholds", thresholds,
                                            "--no-validation", "--set", f"normalise={norm}"))
            for norm in ("none", "category_minmax")}
    labelled = str(base / "labelled.json")
    test_split = _calls_of(lambda: _calibrate(root, store, labelled, models, "--split", "test"))
    return {"base": base, "root": root, "store": store, "models": models, "thresholds": thresholds,
            "first": first, "first_file": first_file, "first_report": first_report, "second": second, "runs": runs,
            "labelled": labelled, "test_split": test_split}


def test_calibrate_picks_the_order_statistic_of_each_categorys_good_scores(calibrated):
    code, output, model_calls = calibrated["first"]
    assert code == 0 and model_calls > 0, output
    content = calibrated["first_file"]
    report = calibrated["first_report"]
    assert report["dataset"]["split"] == "train" and report["config"]["normalise"] == "none"
    assert {i["label"] for i in report["images"]} == {0}
    assert content["method"] == "saa" and content["target_frr"] == TARGET and content["stand_in_models"] is True
    assert content["config"] == report["config"] and content["models"] == report["models"]
    assert content["dataset"]["split"] == "train" and content["calibration_run"] == report["run_id"]
    assert content["artifact"]["stage"] == "decision_thresholds" and len(content["artifact"]["key"]) == 64
    assert content["evaluation"] and content["evaluation"][0].startswith("category_evaluation/")
    assert sorted(content["categories"]) == sorted(_scores(report)) and len(content["categories"]) == 2
    for category, (scores, _) in _scores(report).items():
        entry = content["categories"][category]
        assert entry["rule"] == "target_frr" and (entry["n_good"], entry["n_anomalous"]) == (3, 0)
        assert entry["threshold"] == frr_threshold(scores, TARGET)
        assert entry["empirical_frr"] == pytest.approx(1 / 3) and entry["empirical_frr"] <= TARGET
        assert f"{category:<22} target_frr" in output
    assert "decision_thresholds: 2 computed, 0 reused" in output


def test_second_calibration_makes_no_model_call_and_reuses_the_thresholds_items(calibrated):
    code, output, model_calls = calibrated["second"]
    assert code == 0 and model_calls == 0, output
    assert "decision_thresholds: 0 computed, 2 reused" in output
    again = json.load(open(calibrated["thresholds"]))
    first = calibrated["first_file"]
    assert again["artifact"] == first["artifact"] and again["categories"] == first["categories"]


def test_run_with_thresholds_decides_each_image_on_its_raw_score(calibrated):
    code, report, output, _ = calibrated["runs"]["none"]
    assert code == 0, output
    thresholds = json.load(open(calibrated["thresholds"]))["categories"]
    table = pd.read_parquet(report["decisions"]["files"]["parquet"])
    assert len(table) == len(report["images"]) == 6
    by_id = {i["id"]: i for i in report["images"]}
    for row in table.to_dict("records"):
        assert row["score"] == by_id[row["id"]]["score"]
        assert row["threshold"] == thresholds[row["category"]]["threshold"]
        assert row["decision"] == ("fail" if row["score"] > row["threshold"] else "pass")
    fails = int((table.decision == "fail").sum())
    assert report["decisions"]["anomaly_rate"] == pytest.approx(fails / 6)
    assert report["decisions"]["counts"] == {c: {"pass": int(((table.category == c) & (table.decision == "pass"))
                                                             .sum()), "fail": int(((table.category == c) &
                                                                                   (table.decision == "fail")).sum())}
                                             for c in thresholds}


def test_category_minmax_run_gets_the_thresholds_mapped_and_the_same_decisions(calibrated):
    code, report, output, model_calls = calibrated["runs"]["category_minmax"]
    assert code == 0 and model_calls == 0 and report["config"]["normalise"] == "category_minmax", output
    assert any("mapped into its scores" in n for n in report["decisions"]["notes"])
    minmax = pd.read_parquet(report["decisions"]["files"]["parquet"]).set_index("id")
    raw = pd.read_parquet(calibrated["runs"]["none"][1]["decisions"]["files"]["parquet"]).set_index("id")
    assert (minmax.decision == raw.loc[minmax.index].decision).all()
    assert (minmax.decision == np.where(minmax.score > minmax.threshold, "fail", "pass")).all()
    assert minmax.score.max() == 1.0 and report["decisions"]["thresholds"] != \
        calibrated["runs"]["none"][1]["decisions"]["thresholds"]


def test_labelled_split_uses_the_f1_max_threshold(calibrated):
    code, output, model_calls = calibrated["test_split"]
    assert code == 0 and model_calls == 0, output          # test maps are in the store already
    content = json.load(open(calibrated["labelled"]))
    report = json.load(open(os.path.join(calibrated["base"], "labelled-calibration", "report.json")))
    assert any("F1-max" in n for n in content["notes"]) and "f1_max" in output
    for category, (scores, labels) in _scores(report).items():
        entry = content["categories"][category]
        threshold, f1 = f1_max_threshold(scores, labels)
        assert (entry["rule"], entry["threshold"], entry["f1"]) == ("f1_max", threshold, f1)
        assert (entry["n_good"], entry["n_anomalous"]) == (int((labels == 0).sum()), int((labels == 1).sum()))


# ---------------------------------------------------------------- usage errors: exit 2 before any work
@pytest.mark.parametrize("args, says", [
    (("nope",), "unknown method 'nope'; available: " + ", ".join(sorted(METHODS))),
    (("saa", "--target-frr", "-0.1"), "--target-frr -0.1: a share of good images"),
    (("saa", "--target-frr", "1"), "--target-frr 1.0: a share of good images"),
    (("saa", "--split", "validation"), "unknown split 'validation'"),
    (("saa", "--set", "normalise=category_minmax"), "calibrated on un-normalised scores"),
    (("saa", "--out", "missing/t.json"), "does not exist or is not writable"),
], ids=["method", "negative-target", "target-1", "split", "normalise", "out-folder-missing"])
def test_calibrate_usage_errors(tmp_path, synth_root, args, says):
    store, out = tmp_path / "store", tmp_path / "t.json"
    if "--out" not in args:
        args = (*args, "--out", str(out))
    else:
        args = tuple(str(tmp_path / a) if a == "missing/t.json" else a for a in args)
    calls.reset_counters()
    code, output = run_cli("calibrate", *args, "--dataset", "mvtec", "--root", synth_root, "--store", str(store),
                           "--models-dir", str(tmp_path), "--allow-tiny")
    assert code == 2 and says in " ".join(output.split()), output
    assert calls.total_calls() == 0 and not store.exists() and not out.exists()


def _bad_file(tmp_path, method: str = "saa", content: str | None = None) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if content is not None else json.dumps(
        {"format": "anomflow-thresholds", "version": 1, "method": method, "config": {}, "models": [],
         "categories": {"a": {"threshold": 0.5, "rule": "target_frr", "n_good": 1, "n_anomalous": 0,
                              "empirical_frr": 0.0}}}))
    return str(path)


def test_run_with_a_malformed_thresholds_file_is_refused_before_work(tmp_path, synth_root):
    path = _bad_file(tmp_path, content='{"format": "anomflow-thresholds", "version": 1}')
    calls.reset_counters()
    code, report, output = run_saa(synth_root, str(tmp_path / "store"), str(tmp_path / "out"), str(tmp_path),
                                   "--thresholds", path)
    assert code == 2 and f"--thresholds {path}: method is missing" in " ".join(output.split()), output
    assert report == {} and calls.total_calls() == 0


def test_run_with_another_methods_thresholds_is_refused_before_work(tmp_path, synth_root):
    path = _bad_file(tmp_path, method="sam-lad")
    calls.reset_counters()
    code, report, output = run_saa(synth_root, str(tmp_path / "store"), str(tmp_path / "out"), str(tmp_path),
                                   "--thresholds", path)
    assert code == 2 and "calibrated for method 'sam-lad', not 'saa'" in " ".join(output.split()), output
    assert report == {} and calls.total_calls() == 0
