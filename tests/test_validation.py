"""Validation in real runs (SAA with oracle stages on synthetic data): the report section, Data Docs, the warm rerun
that reuses the stored validation without importing GX, exit code 4, baselines and the up-front usage errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stores import ArtifactStore
from tasks.datasets.synth import write_synthetic_mvtec
from tests.flow_helpers import run_saa, stage_counts

ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("validation") / "data"
    write_synthetic_mvtec(str(root), categories=2, images=3, seed=4, size=64)
    return str(root)


@pytest.fixture(scope="module")
def first(data, tmp_path_factory):
    """One cold run on a store the module's later runs share: (store, out, report)."""
    work = tmp_path_factory.mktemp("first")
    models = work / "models"
    models.mkdir()
    store, out = str(work / "store"), str(work / "out")
    code, report, output = run_saa(data, store, out, str(models), *ORACLE)
    assert code == 0, output
    return store, out, report, str(models)


def test_report_section_and_data_docs(first):
    store, out, report, _ = first
    validation = report["validation"]
    assert validation["success"] is True and validation["cached"] is False
    assert set(validation["suites"]) == {"manifest", "outputs", "metrics"}
    assert all(s["success"] and s["version"] for s in validation["suites"].values())
    for suite in validation["suites"].values():
        for e in suite["expectations"]:
            assert set(e) >= {"expectation", "column", "kwargs", "success", "unexpected_count", "unexpected_examples"}
    assert validation["data_docs"] == "data_docs/index.html"
    index = os.path.join(out, validation["data_docs"])
    assert os.path.getsize(index) > 0
    pages = [f for _, _, files in os.walk(os.path.join(out, "data_docs", "validations")) for f in files]
    assert len(pages) == 3                                   # one page per suite's validation result
    counts = stage_counts(report)
    assert counts["image_statistics"] == (len(report["images"]), 0) and counts["validation_results"] == (1, 0)
    assert "validation" in report["timings"]
    summary = ArtifactStore(store).run_info(report["run_id"]).record["score_summary"]
    assert set(summary["categories"]) == set(report["dataset"]["categories"])
    assert sum(c["n"] for c in summary["categories"].values()) == len(report["images"])


# What only computing needs: a warm run that reuses everything imports none of it (start-up, issue 9). FastAPI is
# not listed: these runs use Prefect's in-process ephemeral server, which imports it (tests/test_startup.py).
COMPUTE_ONLY = ("great_expectations", "pandas", "matplotlib", "torch", "cv2", "pyarrow", "tqdm", "scipy",
                "tifffile")


def test_warm_rerun_reuses_the_validation_without_importing_gx(first, data, tmp_path):
    store, _, report, models = first
    out = str(tmp_path / "warm")
    child = ("import json, sys\nfrom tests.flow_helpers import run_saa\n"
             f"code, report, _ = run_saa({data!r}, {store!r}, {out!r}, {models!r}, *{ORACLE!r})\n"
             f"print(json.dumps({{'code': code, 'loaded': [m for m in {COMPUTE_ONLY!r} if m in sys.modules]}}))\n")
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    warm = json.load(open(os.path.join(out, "report.json")))
    assert warm["validation"]["cached"] is True
    assert warm["validation"]["suites"] == report["validation"]["suites"]
    assert os.path.isfile(os.path.join(out, "data_docs", "index.html"))
    counts = stage_counts(warm)
    assert counts["validation_results"] == (0, 1) and counts["image_statistics"][0] == 0
    assert counts["map_statistics"][0] == 0


def test_baseline_bounds_the_score_drift(first, data, tmp_path):
    store, _, report, models = first
    code, again, output = run_saa(data, store, str(tmp_path / "o"), models, *ORACLE, "--baseline", report["run_id"])
    assert code == 0, output
    drift = [e for e in again["validation"]["suites"]["outputs"]["expectations"] if "drift" in e["description"]]
    assert len(drift) == 3 * len(report["dataset"]["categories"])     # mean, median, std per category
    assert all(e["success"] for e in drift) and again["validation"]["cached"] is False


def test_usage_errors_come_before_any_work(first, data, tmp_path):
    store, _, _, models = first
    floors = tmp_path / "counts.yaml"
    floors.write_text("bottle: {test: many}\n")
    for extra, words in ((("--baseline", "20990101T000000-deadbeef"), "no such run"),
                         (("--metric-floor", "image_aurocc=0.5"), "unknown metric"),
                         (("--expected-counts", str(floors)), "is not a count")):
        out = tmp_path / f"out-{extra[0].strip('-')}"
        code, _, output = run_saa(data, store, str(out), models, *ORACLE, *extra)
        assert code == 2 and words in output, output
        assert not out.exists()


def test_failed_expectation_gives_exit_code_4(data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    good = sorted((root / "synth_object" / "test" / "good").iterdir())[0]
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(good)          # a blank image
    (tmp_path / "counts.yaml").write_text("synth_object: {test: 99}\n")
    models = tmp_path / "models"
    models.mkdir()
    store = str(tmp_path / "store")
    counts = str(tmp_path / "counts.yaml")
    code, report, output = run_saa(str(root), store, str(tmp_path / "a"), str(models), *ORACLE,
                                   "--fail-on-validation", "--expected-counts", counts)
    assert code == 4, output
    manifest = {e["column"] or e["description"]: e for e in report["validation"]["suites"]["manifest"]["expectations"]}
    assert manifest["std_max"]["success"] is False
    assert manifest["std_max"]["unexpected_examples"] == [os.path.relpath(good, root)]
    count = next(e for e in report["validation"]["suites"]["manifest"]["expectations"]
                 if e["expectation"] == "expect_table_row_count_to_equal")
    files = len(list((root / "synth_object" / "test").rglob("*.png")))
    assert count["success"] is False and count["observed_value"] == files
    code, report, _ = run_saa(str(root), store, str(tmp_path / "b"), str(models), *ORACLE,
                              "--expected-counts", counts)
    assert code == 0 and report["validation"]["success"] is False and report["validation"]["cached"] is True


def test_no_validation_still_records_the_summary(data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    store = str(tmp_path / "store")
    code, report, _ = run_saa(data, store, str(tmp_path / "o"), str(models), *ORACLE, "--no-validation")
    assert code == 0 and report["validation"] is None
    assert not os.path.exists(tmp_path / "o" / "data_docs")
    assert "image_statistics" not in stage_counts(report)
    assert ArtifactStore(store).run_info(report["run_id"]).record["score_summary"]["categories"]


def test_a_crash_inside_gx_is_a_failed_validation_with_its_reason(first, data, tmp_path, monkeypatch):
    store, _, _, models = first

    def crash(*args, **kwargs):
        raise RuntimeError("metric backend exploded")
    monkeypatch.setattr("tasks.validation.gx_stage.run_suites", crash)
    code, report, output = run_saa(data, store, str(tmp_path / "o"), models, *ORACLE, "--fail-on-validation",
                                   "--metric-floor", "image_ap=0.01")     # new content: the stage computes
    assert code == 4, output
    validation = report["validation"]
    assert validation["success"] is False and validation["data_docs"] is None
    assert "metric backend exploded" in validation["error"] and "validation_results" in stage_counts(report)
