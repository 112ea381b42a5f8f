"""Decision thresholds on oracle scores, the thresholds file, and the decision files of a run (no models)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from flows.cli.preflight import UsageError
from tasks.datasets.records import ImageRecord
from tasks.decisions.apply import apply_decisions
from tasks.decisions.thresholds import allowed_rejects, choose_threshold, f1_max_threshold, frr_threshold
from tasks.decisions.thresholds_file import load_thresholds, write_thresholds
from tasks.report.post_run import PostRunOptions


def _frr(good: np.ndarray, threshold: float) -> float:
    return float((good > threshold).sum() / good.size)


# ---------------------------------------------------------------- target-FRR order statistic
@pytest.mark.parametrize("seed", range(6))
def test_frr_threshold_is_the_lowest_score_whose_frr_is_within_target(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 7, 10, 99, 100, 257):
        good = rng.normal(size=n)
        for target in (0.0, 0.001, 0.01, 0.05, 0.1, 0.29, 1 / 3, 0.5, 0.99):
            t = frr_threshold(good, target)
            assert t in good
            assert _frr(good, t) <= target
            assert (good > t).sum() == allowed_rejects(n, target)      # distinct scores: the budget is used
            lower = good[good < t]
            if lower.size:                                              # the next lower score breaks the target
                assert _frr(good, lower.max()) > target


def test_allowed_rejects_is_the_largest_count_within_target_compared_as_floats():
    for n in (1, 3, 7, 100, 1000):
        for target in (0.0, 0.01, 0.07, 0.1, 0.29, 0.3, 1 / 3, 0.5, 0.999):
            k = allowed_rejects(n, target)
            assert k / n <= target and (k == n or (k + 1) / n > target)
    assert allowed_rejects(100, 0.29) == 29 and allowed_rejects(100, 0.07) == 7


def test_frr_threshold_with_ties_never_exceeds_the_target():
    good = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    assert frr_threshold(good, 0.5) == 1.0 and _frr(good, 1.0) == 0.5
    # budget 2 of 6 (1/3), but s(4) = 2.0 is tied with s(5): only one image (3.0) fails; 1.0 would fail three
    assert frr_threshold(good, 0.34) == 2.0 and _frr(good, 2.0) == pytest.approx(1 / 6)
    assert frr_threshold(np.full(5, 0.7), 0.4) == 0.7 and _frr(np.full(5, 0.7), 0.7) == 0.0


def test_frr_threshold_single_image_and_zero_target():
    assert frr_threshold(np.array([0.42]), 0.2) == 0.42
    assert frr_threshold(np.array([0.42]), 0.0) == 0.42
    good = np.array([0.3, 0.9, 0.1, 0.5])
    assert frr_threshold(good, 0.0) == 0.9 and _frr(good, 0.9) == 0.0


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_frr_threshold_refuses_a_target_outside_0_1(target):
    with pytest.raises(ValueError, match="not in \\[0, 1\\)"):
        frr_threshold(np.array([0.1, 0.2]), target)


# ---------------------------------------------------------------- F1-max on labelled scores
@pytest.mark.parametrize("seed", range(8))
def test_f1_max_threshold_matches_sklearn_precision_recall_curve(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=n) + labels * rng.uniform(0, 2), 1)   # rounding makes ties
    threshold, f1 = f1_max_threshold(scores, labels)
    precision, recall, cuts = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_curve = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert f1 == pytest.approx(f1_curve.max())
    flagged = scores > threshold
    assert f1_score(labels, flagged.astype(int)) == pytest.approx(f1)
    best_cut = cuts[np.flatnonzero(np.isclose(f1_curve, f1_curve.max()))].max()   # highest of equal maxima
    assert np.array_equal(flagged, scores >= best_cut)


def test_f1_max_threshold_below_the_lowest_score_when_everything_should_fail():
    threshold, f1 = f1_max_threshold(np.array([0.2, 0.5, 0.9]), np.array([1, 1, 0]))
    assert threshold < 0.2 and f1 == pytest.approx(0.8)


def test_choose_threshold_picks_the_rule_from_the_labels():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    frr = choose_threshold(scores, np.array([0, 0, -1, -1, 0]), 0.2)   # unlabelled counts as good
    assert (frr.rule, frr.threshold, frr.n_good, frr.n_anomalous, frr.f1) == ("target_frr", 0.8, 5, 0, None)
    assert frr.empirical_frr == pytest.approx(0.2)
    f1 = choose_threshold(scores, np.array([0, 0, 0, 1, 1]), 0.2)
    assert (f1.rule, f1.threshold, f1.n_good, f1.n_anomalous, f1.f1, f1.empirical_frr) == \
           ("f1_max", 0.3, 3, 2, 1.0, 0.0)
    with pytest.raises(ValueError, match="no good image"):
        choose_threshold(scores[:2], np.array([1, 1]), 0.1)
    with pytest.raises(ValueError, match="not finite"):
        choose_threshold(np.array([0.1, np.nan]), np.array([0, 0]), 0.1)


# ---------------------------------------------------------------- thresholds.json
def _file(method: str = "saa", **categories) -> dict:
    cats = categories or {"bottle": {"threshold": 0.5, "rule": "target_frr", "n_good": 4, "n_anomalous": 0,
                                     "empirical_frr": 0.0, "f1": None, "item": "x"}}
    return {"format": "anomflow-thresholds", "version": 1, "method": method, "target_frr": 0.01,
            "config": {"normalise": "none", "box_threshold": 0.1},
            "models": [{"name": "tiny-sam", "weights_sha256": "a"}], "categories": cats}


def test_thresholds_file_round_trip(tmp_path):
    path = str(tmp_path / "t.json")
    write_thresholds(path, _file())
    loaded = load_thresholds(path, "saa")
    assert loaded.method == "saa" and loaded.target_frr == 0.01
    assert loaded.categories["bottle"].threshold == 0.5 and loaded.categories["bottle"].rule == "target_frr"
    assert os.listdir(tmp_path) == ["t.json"]


@pytest.mark.parametrize("content, says", [
    ("{not json", "Expecting property name"),
    (json.dumps([1]), "expected a JSON object, got list"),
    (json.dumps({**_file(), "format": "other"}), "not an anomflow thresholds file"),
    (json.dumps({**_file(), "categories": {}}), "no category has a threshold"),
    (json.dumps(_file(bottle={"threshold": "high", "rule": "target_frr", "n_good": 1, "n_anomalous": 0,
                              "empirical_frr": 0.0})), "category 'bottle': threshold 'high' is not a finite number"),
    (json.dumps(_file(bottle={"threshold": 0.3, "rule": "median", "n_good": 1, "n_anomalous": 0,
                              "empirical_frr": 0.0})), "rule 'median' is not one of target_frr, f1_max"),
    (json.dumps({**_file(), "target_frr": 2}), "target_frr 2 is not a share"),
    ('{"format": "anomflow-thresholds", "version": 1, "method": "saa", "config": {}, "models": [], '
     '"categories": {"a": {"threshold": NaN}}}', "threshold nan is not a finite number"),
], ids=["not-json", "not-object", "format", "empty", "threshold-text", "rule", "target", "nan"])
def test_malformed_thresholds_file_is_a_usage_error_naming_path_and_reason(tmp_path, content, says):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(UsageError) as err:
        load_thresholds(str(path))
    assert str(err.value).startswith(f"--thresholds {path}: ") and says in str(err.value)


def test_thresholds_of_another_method_or_missing_file_are_usage_errors(tmp_path):
    path = tmp_path / "t.json"
    write_thresholds(str(path), _file(method="sam-lad"))
    with pytest.raises(UsageError, match="calibrated for method 'sam-lad', not 'saa'"):
        load_thresholds(str(path), "saa")
    with pytest.raises(UsageError, match="cannot read it"):
        load_thresholds(str(tmp_path / "absent.json"))


def test_write_thresholds_refuses_what_a_reader_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="no category has a threshold"):
        write_thresholds(str(tmp_path / "t.json"), {**_file(), "categories": {}})
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- decision files
def _record(root: str, category: str, name: str) -> ImageRecord:
    return ImageRecord(f"{root}/{category}/test/good/{name}", f"{category}/test/good/{name}", category, "test", 0,
                       "good")


def _run(tmp_path, thresholds_path: str | None, config: dict | None = None):
    root = str(tmp_path / "data")
    records = [_record(root, c, n) for c, n in (("bottle", "0.png"), ("bottle", "1.png"), ("bottle", "2.png"),
                                                ("cable", "0.png"), ("bottle", "bad.png"))]
    report = {"method": "saa", "config": config or {"normalise": "none", "box_threshold": 0.1, "batch_size": 8},
              "models": [{"name": "tiny-sam", "weights_sha256": "a"}],
              "images": [{"id": f"id{n}", "path": r.path, "category": r.category, "label": 0, "score": s}
                         for n, (r, s) in enumerate(zip(records, (0.2, 0.7, 0.5, 0.9)))],
              "failures": [{"path": records[4].path, "reason": "cannot identify image file"}]}
    ctx = SimpleNamespace(post=PostRunOptions(thresholds=thresholds_path))
    state = SimpleNamespace(config=report["config"], records=records, alive=[], artifacts=[])
    return ctx, state, report


def test_decision_files_hold_one_row_per_image_with_errors_and_undecided(tmp_path):
    path = str(tmp_path / "t.json")
    write_thresholds(path, _file())                      # bottle 0.5; no threshold for cable
    ctx, state, report = _run(tmp_path, path)
    out = str(tmp_path / "out")
    decisions = apply_decisions(ctx, state, report, out)
    table = pd.read_parquet(os.path.join(out, "decisions.parquet"))
    assert list(table.columns) == ["id", "path", "category", "score", "threshold", "decision", "reason"]
    assert {c: str(t) for c, t in table.dtypes.items() if c in ("score", "threshold")} == \
           {"score": "float64", "threshold": "float64"}
    assert all(pd.api.types.is_string_dtype(table[c]) for c in ("id", "path", "category", "decision", "reason"))
    rows = {os.path.basename(p) + ":" + c: r for p, c, r in
            zip(table.path, table.category, table.to_dict("records"))}
    assert [r["decision"] for r in table.to_dict("records")] == ["pass", "fail", "pass", "error", "undecided"]
    assert rows["0.png:bottle"]["score"] == 0.2 and rows["0.png:bottle"]["threshold"] == 0.5
    assert rows["2.png:bottle"]["decision"] == "pass"                 # 0.5 is not > 0.5
    bad = rows["bad.png:bottle"]
    assert bad["decision"] == "error" and pd.isna(bad["score"]) and pd.isna(bad["id"])
    assert bad["reason"] == "cannot identify image file"
    cable = rows["0.png:cable"]
    assert cable["decision"] == "undecided" and pd.isna(cable["threshold"]) and "no threshold" in cable["reason"]
    csv = pd.read_csv(os.path.join(out, "decisions.csv"))
    assert csv["decision"].tolist() == table["decision"].tolist() and np.allclose(csv.score[:3], table.score[:3])
    assert decisions["counts"] == {"bottle": {"pass": 2, "fail": 1}, "cable": {"pass": 0, "fail": 0}}
    assert decisions["anomaly_rate"] == pytest.approx(1 / 3) and decisions["errors"] == 1
    assert decisions["undecided"] == 1 and decisions["thresholds"] == {"bottle": 0.5}
    assert decisions["rule"] == {"bottle": "target_frr"} and decisions["target_frr"] == 0.01
    assert any("cable" in n and "undecided" in n for n in decisions["notes"])
    assert not any("differs" in n for n in decisions["notes"])     # batch_size is no difference
    assert sorted(os.listdir(out)) == ["decisions.csv", "decisions.parquet"]


def test_config_and_model_mismatch_are_notes_not_errors(tmp_path):
    path = str(tmp_path / "t.json")
    write_thresholds(path, {**_file(), "models": [{"name": "sam-vit-h", "weights_sha256": "b"}]})
    ctx, state, report = _run(tmp_path, path, {"normalise": "none", "box_threshold": 0.2})
    decisions = apply_decisions(ctx, state, report, str(tmp_path / "out"))
    assert any("box_threshold (0.1 -> 0.2)" in n for n in decisions["notes"])
    assert any("models differ" in n for n in decisions["notes"])
    assert decisions["counts"]["bottle"] == {"pass": 2, "fail": 1}


def test_a_thresholds_file_broken_after_the_check_decides_nothing(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{}")
    ctx, state, report = _run(tmp_path, str(path))
    decisions = apply_decisions(ctx, state, report, str(tmp_path / "out"))
    assert decisions["anomaly_rate"] == 0.0 and decisions["undecided"] == 4
    assert any("not an anomflow thresholds file" in n for n in decisions["notes"])


def test_no_thresholds_no_decisions(tmp_path):
    ctx, state, report = _run(tmp_path, None)
    assert apply_decisions(ctx, state, report, str(tmp_path / "out")) is None
    assert not (tmp_path / "out").exists()


def test_a_score_that_is_not_a_number_is_undecided_never_passed():
    from tasks.decisions.apply import decision_rows

    report = {"images": [{"id": "a", "path": "/d/c/a.png", "category": "c", "score": float("nan")},
                         {"id": "b", "path": "/d/c/b.png", "category": "c", "score": 0.2},
                         {"id": "e", "path": "/d/c/e.png", "category": "c", "score": 0.9}], "failures": []}
    rows = {r["id"]: r for r in decision_rows(report, SimpleNamespace(records=[]), {"c": 0.5})}
    assert rows["a"]["decision"] == "undecided" and "not finite" in rows["a"]["reason"]
    assert rows["b"]["decision"] == "pass" and rows["e"]["decision"] == "fail"
