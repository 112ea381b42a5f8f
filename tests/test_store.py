"""Keys, per-item failure inside a batch, one pack per batch, old layouts (refused, then migrated), bad paths.

The backend contract (kill, concurrency, gc, claims, verify) is in tests/test_store_contract.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli.main import app
from stores import ArtifactStore, ItemData, StoreError, artifact_key, canonical_json, item_key
from tasks.engine.runner import StageDef, WorkItem, run_stage


def test_keys_depend_on_exactly_what_the_stage_reads():
    base = artifact_key("s", 1, {"a": 1, "b": [1, 2]}, [{"name": "m", "weights_sha256": "x"}], ["u1"])
    assert base == artifact_key("s", 1, {"b": [1, 2], "a": 1}, [{"name": "m", "weights_sha256": "x"}], ["u1"])
    variants = [artifact_key("s", 2, {"a": 1, "b": [1, 2]}, [{"name": "m", "weights_sha256": "x"}], ["u1"]),
                artifact_key("s", 1, {"a": 2, "b": [1, 2]}, [{"name": "m", "weights_sha256": "x"}], ["u1"]),
                artifact_key("s", 1, {"a": 1, "b": [1, 2]}, [{"name": "m", "weights_sha256": "y"}], ["u1"]),
                artifact_key("s", 1, {"a": 1, "b": [1, 2]}, [{"name": "m", "weights_sha256": "x"}], ["u2"]),
                artifact_key("t", 1, {"a": 1, "b": [1, 2]}, [{"name": "m", "weights_sha256": "x"}], ["u1"])]
    assert len({base, *variants}) == 6
    assert canonical_json({"b": (1, 2), "a": 0.5}) == '{"a":0.5,"b":[1,2]}'
    assert item_key("a" * 64) == "a" * 64
    assert item_key("a" * 64, "crack.") != item_key("a" * 64, "hole.")
    with pytest.raises(ValueError, match="non-finite"):
        canonical_json({"x": float("nan")})


def test_failing_item_fails_alone_and_the_batch_commits(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    calls: list[int] = []

    def compute(batch):
        calls.append(len(batch))
        if any(w.payload == 3 for w in batch):
            raise ValueError("bad pixels")
        return [ItemData({"v": np.array([w.payload])}) for w in batch]

    work = [WorkItem(f"i{i}", f"img{i}", i) for i in range(6)]
    res = run_stage(store, StageDef("s", 1, {}), work, compute, batch_size=4, progress=False)
    assert res.failures == {"img3": "ValueError: bad pixels"}
    assert (res.stats.computed, res.stats.failed) == (5, 1)
    assert calls == [4, 1, 1, 1, 1, 2]   # the failing batch is retried item by item, the next batch whole
    again = run_stage(store, StageDef("s", 1, {}), work, compute, batch_size=4, progress=False)
    assert (again.stats.computed, again.stats.reused, again.stats.failed) == (0, 5, 1)




def test_a_batch_is_one_pack_and_its_items_stay_individually_addressable(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    work = [WorkItem(f"i{i}", f"img{i}", i) for i in range(8)]
    res = run_stage(store, StageDef("s", 1, {}), work, lambda b: [ItemData({"v": np.arange(w.payload)}) for w in b],
                    batch_size=8, progress=False)
    packs = store.index.packs(res.ref.path)
    assert len(packs) == 1 and packs[0].items == 8 and packs[0].status == "committed"
    view = store.open(res.ref)
    assert [view.read(f"i{i}").arrays["v"].tolist() for i in (0, 5)] == [[], [0, 1, 2, 3, 4]]


def _write_layout_1(root: str) -> None:
    """A store as anomflow wrote it before batch packs: one Zarr group per item write, a _complete marker."""
    store = zarr.storage.LocalStore(root)
    zarr.open_group(store, mode="w", attributes={"anomflow_store": 1})
    zarr.open_group(store, path="anomaly_map/k1", mode="w", attributes={"params": {"fusion": "mean"}, "version": 1})
    for n, item in enumerate(("a" * 64, "b" * 64)):
        group = zarr.open_group(store, path=f"anomaly_map/k1/{item}/w{n}", mode="w")
        group.create_array("map", data=np.full((4, 4), n, np.float32))
        group.create_group("_complete", attributes={"n": n})
    zarr.open_group(store, path=f"anomaly_map/k1/{'c' * 64}/w9", mode="w")    # a partial write: not copied


def test_an_old_layout_is_refused_with_the_command_that_migrates_it(tmp_path, synth_root):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    _write_layout_1(old)
    with pytest.raises(StoreError, match=r"layout 1 .*anomflow store migrate"):
        ArtifactStore(old)
    result = CliRunner().invoke(app, ["run", "saa", "--dataset", "mvtec", "--root", synth_root, "--store", old,
                                      "--allow-tiny", "--models-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "anomflow store migrate" in result.output
    result = CliRunner().invoke(app, ["store", "migrate", old, new])
    assert result.exit_code == 0 and "migrated 2 items of 1 artifacts" in result.output
    store = ArtifactStore(new)
    view = store.open(store.ref("anomaly_map", "k1"))
    assert view.read("b" * 64).arrays["map"].sum() == 16 and view.read("a" * 64).meta == {"n": 0}
    assert not view.has("c" * 64)
    assert store.artifact_record("anomaly_map", "k1")["params"] == {"fusion": "mean"}
    assert CliRunner().invoke(app, ["store", "gc", "--store", new, "--grace-minutes", "0"]).output.startswith(
        "removed 0 run records, 0 artifacts")      # the migration's run record keeps what it copied


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an anomflow store"):
        ArtifactStore(str(tmp_path / "home"))
    assert os.listdir(tmp_path / "home") == ["notes.txt"]


def _open_index(root: str, barrier) -> None:
    from stores.sqlite_index import SqliteIndex

    barrier.wait()
    SqliteIndex(root)


def test_processes_opening_a_new_sqlite_index_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL answers SQLITE_BUSY without waiting; opening must retry (seen in CI as
    'database is locked' when two writers started on a fresh store)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")   # fork in a process with the suite's threads is unsafe
    for round_ in range(5):
        root = tmp_path / str(round_)
        root.mkdir()
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_index, args=(str(root), barrier)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * 6, round_
