"""Flows on the layout-2 store: S3 end to end, the input hash cache, oracle ground truth in the key, report failures."""
from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
import pytest
from PIL import Image

import tasks.report.finish as finish
from stores import ArtifactStore
from tasks.datasets.image_io import read_image
from tasks.datasets.records import ImageError
from tasks.datasets.synth import write_synthetic_mvtec
from tests.flow_helpers import run_saa, stage_counts

ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle", "--set", "eval_resolution=64",
          "--set", "normalise=none")


def test_saa_runs_on_s3_and_a_warm_rerun_makes_no_model_calls(synth_root, models_dir, tmp_path, s3_server,
                                                              monkeypatch, counters):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = f"s3://{s3_server.bucket}/flows-{uuid.uuid4().hex[:8]}"
    code, cold, _ = run_saa(synth_root, store, str(tmp_path / "o1"), models_dir, "--batch-size", "3")
    assert code == 0 and cold["failures"] == [] and len(cold["images"]) == 8
    counts = stage_counts(cold)
    assert counts.pop("category_evaluation") == (2, 0)              # one set item per category
    assert counts.pop("report_figures") == (2, 0) and counts.pop("validation_results") == (1, 0)
    assert all(c == 8 for c, _ in counts.values())
    counters.reset_counters()
    code, warm, _ = run_saa(synth_root, store, str(tmp_path / "o2"), models_dir, "--batch-size", "3")
    assert code == 0 and counters.total_calls() == 0 and all(c == 0 for c, _ in stage_counts(warm).values())
    assert [i["score"] for i in warm["images"]] == [i["score"] for i in cold["images"]]


def test_a_scheduled_run_hashes_only_new_or_changed_files(tmp_path, models_dir):
    data, store = tmp_path / "line", str(tmp_path / "store")
    write_synthetic_mvtec(str(tmp_path / "src"), categories=1, images=4, seed=2, size=64)
    sources = sorted((tmp_path / "src").glob("*/test/*/*.png"))
    data.mkdir()
    for src in sources[:3]:
        shutil.copy(src, data / src.name.replace(".png", f"_{src.parent.name}.png"))
    for path in data.iterdir():          # files written within 2 s of hashing are re-read next time ("racy")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    _, first, _ = run_saa(str(data), store, str(tmp_path / "o1"), models_dir, dataset="folder")
    _, second, _ = run_saa(str(data), store, str(tmp_path / "o2"), models_dir, dataset="folder")
    assert (first["dataset"]["files_hashed"], second["dataset"]["files_hashed"]) == (3, 0)
    shutil.copy(sources[3], data / "new.png")                      # one new file, one rewritten in place
    victim = sorted(data.iterdir())[0]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(2_000_000_000, 2_000_000_000))
    _, third, _ = run_saa(str(data), store, str(tmp_path / "o3"), models_dir, dataset="folder")
    assert third["dataset"]["files_hashed"] == 2
    assert stage_counts(third)["image_embedding"] == (2, 2)        # identity is still the content hash


def test_a_file_rewritten_after_hashing_is_refused_not_stored_under_its_old_hash(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)
    from tasks.datasets.image_io import file_sha256

    sha = file_sha256(str(path))
    assert read_image(str(path), expect_sha256=sha).shape == (8, 8, 3)
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(path)
    with pytest.raises(ImageError, match="changed on disk during the run"):
        read_image(str(path), expect_sha256=sha)


def test_editing_a_ground_truth_mask_recomputes_the_oracle_boxes_that_read_it(tmp_path, models_dir):
    data = tmp_path / "d"
    write_synthetic_mvtec(str(data), categories=1, images=4, seed=5, size=64)
    store = str(tmp_path / "s")
    code, _, _ = run_saa(str(data), store, str(tmp_path / "o1"), models_dir, *ORACLE, "--save-maps", str(tmp_path / "m1"))
    mask_path = sorted(data.rglob("ground_truth/*/*_mask.png"))[0]
    edited = np.zeros((64, 64), np.uint8)
    edited[5:20, 30:50] = 255                                      # a different defect, same size
    Image.fromarray(edited).save(mask_path)
    code, warm, _ = run_saa(str(data), store, str(tmp_path / "o2"), models_dir, *ORACLE, "--save-maps",
                            str(tmp_path / "m2"))
    assert code == 0 and stage_counts(warm)["defect_boxes"][0] == 1     # only the edited image's boxes
    code, fresh, _ = run_saa(str(data), str(tmp_path / "fresh"), str(tmp_path / "o3"), models_dir, *ORACLE,
                             "--save-maps", str(tmp_path / "m3"))
    import tifffile

    for tiff in sorted((tmp_path / "m3").rglob("*.tiff")):
        rel = tiff.relative_to(tmp_path / "m3")
        assert np.abs(tifffile.imread(tmp_path / "m2" / rel) - tifffile.imread(tiff)).max() == 0, rel


def test_a_report_that_cannot_be_written_keeps_the_work_and_marks_the_run_failed(synth_root, models_dir, tmp_path,
                                                                                   monkeypatch, counters):
    store = str(tmp_path / "s")

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finish, "write_json_atomic", disk_full)
    code, _, output = run_saa(synth_root, store, str(tmp_path / "o"), models_dir)
    assert code == 1 and "No space left on device" in output and "Nothing computed is lost" in output
    runs = ArtifactStore(store).index.runs()
    assert [r.status for r in runs] == ["failed"] and "No space left" in runs[0].record["error"]
    monkeypatch.undo()
    counters.reset_counters()
    code, report, _ = run_saa(synth_root, store, str(tmp_path / "o"), models_dir)
    assert code == 0 and counters.total_calls() == 0 and json.load(open(tmp_path / "o" / "report.json"))
