"""Usage errors are caught before any work starts: exit 2, one line naming the path, no traceback, nothing written."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from flows.cli import preflight
from tests.flow_helpers import run_cli, run_saa


def _run(tmp_path, models_dir, root, *extra, store=None, out=None, method="saa", command="run"):
    store = store if store is not None else str(tmp_path / "s")
    out = out if out is not None else str(tmp_path / "o")
    return run_cli(command, method, "--dataset", "mvtec", "--root", root, "--store", store, "--out", out,
                   "--models-dir", models_dir, "--allow-tiny", "--no-progress", *extra)


def _assert_usage_error(code, output, *needles):
    """Exit 2, exactly one `error:` line, naming every needle, and no traceback."""
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert all(n in errors[0] for n in needles), errors[0]
    assert "Traceback" not in output


def _no_work(tmp_path):
    """Neither the default store nor the default report folder of `_run` was created."""
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_store_that_is_a_file(tmp_path, models_dir, synth_root):
    store = tmp_path / "store.zarr"
    store.write_text("not a store")
    code, out = _run(tmp_path, models_dir, synth_root, store=str(store))
    _assert_usage_error(code, out, "--store", str(store), "is a file")
    assert store.read_text() == "not a store"
    _no_work(tmp_path)


def test_store_whose_parent_is_missing(tmp_path, models_dir, synth_root):
    store = tmp_path / "nope" / "store"
    code, out = _run(tmp_path, models_dir, synth_root, store=str(store))
    _assert_usage_error(code, out, str(store), "parent directory", str(tmp_path / "nope"), "does not exist")
    assert not (tmp_path / "nope").exists()
    _no_work(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")
def test_store_in_a_location_nobody_can_write(tmp_path, models_dir, synth_root):
    """/proc refuses new files even to root (chmod 0o555 would not stop root)."""
    code, out = _run(tmp_path, models_dir, synth_root, store="/proc/anomflow-store")
    _assert_usage_error(code, out, "/proc/anomflow-store", "not writable")
    code, out = _run(tmp_path, models_dir, synth_root, store="file:///proc/self")   # exists, read-only
    _assert_usage_error(code, out, "/proc/self", "directory is not writable")
    assert not os.path.exists("/proc/anomflow-store")
    _no_work(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")
def test_probe_really_writes(monkeypatch, tmp_path):
    """The probe does not trust permission bits: with os.access lying, /proc is still refused."""
    monkeypatch.setattr(preflight.os, "access", lambda *a, **k: True)
    assert "creating a file there failed" in preflight._probe_writable("/proc")
    assert preflight._probe_writable(str(tmp_path)) is None
    assert os.listdir(tmp_path) == []   # the probe file is removed


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_directory_for_a_normal_user(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(preflight.UsageError, match="not writable"):
            preflight.check_store(str(ro / "store"))
    finally:
        ro.chmod(0o755)


def test_out_that_is_a_file(tmp_path, models_dir, synth_root):
    out_file = tmp_path / "report.txt"
    out_file.write_text("x")
    code, out = _run(tmp_path, models_dir, synth_root, out=str(out_file))
    _assert_usage_error(code, out, "--out", str(out_file), "is a file")
    assert not (tmp_path / "s").exists()


def test_save_maps_that_is_a_file(tmp_path, models_dir, synth_root):
    maps = tmp_path / "maps"
    maps.write_text("x")
    code, out = _run(tmp_path, models_dir, synth_root, "--save-maps", str(maps))
    _assert_usage_error(code, out, "--save-maps", str(maps), "is a file")
    _no_work(tmp_path)


def test_save_maps_whose_parent_is_missing(tmp_path, models_dir, synth_root):
    maps = tmp_path / "missing" / "maps"
    code, out = _run(tmp_path, models_dir, synth_root, "--save-maps", str(maps))
    _assert_usage_error(code, out, "--save-maps", str(maps), "does not exist")
    assert not (tmp_path / "missing").exists()
    _no_work(tmp_path)


def test_ablate_checks_its_out_too(tmp_path, models_dir, synth_root):
    out_file = tmp_path / "ablation"
    out_file.write_text("x")
    code, out = _run(tmp_path, models_dir, synth_root, out=str(out_file), method="saa-plus", command="ablate")
    _assert_usage_error(code, out, "--out", str(out_file), "is a file")
    assert not (tmp_path / "s").exists()


def test_default_locations_may_create_parents_and_remote_urls_are_not_touched(tmp_path, no_network):
    deep = str(tmp_path / "a" / "b" / "store")
    with pytest.raises(preflight.UsageError, match="does not exist"):
        preflight.check_outputs(deep, str(tmp_path / "o"), None)
    preflight.check_outputs(deep, str(tmp_path / "o"), None, create_parents=frozenset({deep}))
    for url in ("memory://anomflow", "s3://bucket/anomflow", "simplecache::s3://bucket/x"):
        preflight.check_store(url)
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()


def test_empty_set_value_is_refused(tmp_path, models_dir, synth_root):
    code, out = _run(tmp_path, models_dir, synth_root, "--set", "box_threshold=")
    _assert_usage_error(code, out, "box_threshold", "empty value", "omit --set box_threshold")
    _no_work(tmp_path)


def test_string_field_keeps_a_numeric_looking_value(tmp_path, models_dir, synth_root):
    from tasks.config import apply_overrides
    from tasks.saa_plus.config import SAAPlusConfig

    config = apply_overrides(SAAPlusConfig(), ["expert_table=123", "models.sam=1", "prompts.saliency=false",
                                               "k=3", "box_threshold=0.3", "max_boxes_per_caption=null"])
    assert config.expert_table == "123" and config.models.sam == "1"
    assert config.prompts.saliency is False and config.k == 3 and config.box_threshold == 0.3
    assert config.max_boxes_per_caption is None
    code, out = _run(tmp_path, models_dir, synth_root, "--set", "expert_table=123", method="saa-plus")
    _assert_usage_error(code, out, "expert table '123' not found")
    assert "valid string" not in out
    _no_work(tmp_path)


def _rgb(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), np.uint8)).save(path)


def test_directory_named_like_an_image_is_a_failed_item(tmp_path, models_dir):
    from tasks.datasets.synth import write_synthetic_mvtec

    root = tmp_path / "mvtec"
    [cat] = write_synthetic_mvtec(str(root), categories=1, images=2, seed=0, size=64)
    odd = root / cat / "test" / "good" / "007.png"
    odd.mkdir()
    code, report, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir)
    assert code == 3
    assert report["failures"] == [{"path": str(odd), "reason": "is a directory, not an image file"}]
    assert len(report["images"]) == 2

    folder = tmp_path / "line"
    _rgb(folder / "a.png", 1)
    _rgb(folder / "b.png" / "inner.png", 2)   # a folder named like an image, holding an image
    code, report, _ = run_saa(str(folder), str(tmp_path / "s"), str(tmp_path / "o2"), models_dir, dataset="folder")
    assert code == 3
    assert report["failures"] == [{"path": str(folder / "b.png"), "reason": "is a directory, not an image file"}]
    assert sorted(os.path.basename(i["path"]) for i in report["images"]) == ["a.png", "inner.png"]
