"""The artifact store: round trips, keys, atomic commits under kill, concurrent writers, gc."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

import stores.artifact_store as artifact_store
from stores import ArtifactStore, ItemData, artifact_key, canonical_json, item_key
from stores.maintenance import collect_garbage, list_artifacts
from tasks.engine.runner import StageDef, WorkItem, run_stage


def _square_stage(store_url: str, n: int, kill_after: int | None = None) -> dict:
    """Run a stage computing i**2 maps for n items; optionally SIGKILL itself before the k-th commit."""
    store = ArtifactStore(store_url)
    if kill_after is not None:
        written = {"n": 0}

        def hook(base: str) -> None:
            written["n"] += 1
            if written["n"] > kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        artifact_store._before_commit_hook = hook
    stage = StageDef("square", 1, {"power": 2})
    work = [WorkItem(f"item{i:03d}", f"img{i}", i) for i in range(n)]
    res = run_stage(store, stage, work, lambda b: [ItemData({"v": np.full((8, 8), w.payload ** 2, np.float32)},
                                                            {"i": w.payload}) for w in b], batch_size=3,
                    progress=False)
    return {"computed": res.stats.computed, "reused": res.stats.reused}


def test_round_trip_keeps_dtypes_shapes_and_meta(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    ref = store.ensure_artifact("boxes", "k1", {"params": {"a": 1}})
    data = ItemData({"boxes": np.zeros((0, 4), np.float32), "masks": np.ones((2, 5, 7), bool),
                     "ids": np.arange(3, dtype=np.int64)}, {"phrases": ["a", "b"], "height": 5})
    store.write_item(ref, "img", data)
    back = store.open(ref).read("img")
    assert back.arrays["boxes"].shape == (0, 4) and back.arrays["boxes"].dtype == np.float32
    assert back.arrays["masks"].dtype == bool and back.arrays["masks"].all()
    np.testing.assert_array_equal(back.arrays["ids"], [0, 1, 2])
    assert back.meta == {"phrases": ["a", "b"], "height": 5}
    assert store.artifact_record("boxes", "k1")["params"] == {"a": 1}


def test_object_arrays_are_refused(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    ref = store.ensure_artifact("x", "k", {})
    with pytest.raises(TypeError, match="only bool/int/float"):
        store.write_item(ref, "i", ItemData({"names": np.array(["a", None], dtype=object)}))
    assert store.committed_items(ref) == {}


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


def test_partial_write_is_never_trusted(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    ref = store.ensure_artifact("x", "k", {})

    def boom(base):
        raise RuntimeError("killed between data and marker")

    old = artifact_store._before_commit_hook
    artifact_store._before_commit_hook = boom
    try:
        with pytest.raises(RuntimeError):
            store.write_item(ref, "i", ItemData({"v": np.ones(3)}))
    finally:
        artifact_store._before_commit_hook = old
    assert store.committed_items(ref) == {}
    with pytest.raises(KeyError, match="not in the store"):
        store.open(ref).read("i")


def test_run_killed_mid_write_resumes_without_trusting_partial_data(tmp_path):
    url = str(tmp_path / "s")
    proc = mp.get_context("spawn").Process(target=_square_stage, args=(url, 10, 4))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    store = ArtifactStore(url)
    ref = store.ref("square", StageDef("square", 1, {"power": 2}).key)
    assert len(store.committed_items(ref)) == 4           # the 5th write had data but no marker
    stats = _square_stage(url, 10)
    assert stats == {"computed": 6, "reused": 4}
    view = store.open(ref)
    for i in range(10):
        assert view.read(f"item{i:03d}").arrays["v"][0, 0] == i ** 2


def test_two_concurrent_runs_on_one_store_stay_consistent(tmp_path):
    url = str(tmp_path / "s")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_square_stage, args=(url, 30)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = ArtifactStore(url)
    ref = store.ref("square", StageDef("square", 1, {"power": 2}).key)
    view = store.open(ref)
    assert len(view.committed) == 30
    assert all(view.read(f"item{i:03d}").arrays["v"].sum() == 64 * i ** 2 for i in range(30))
    assert _square_stage(url, 30) == {"computed": 0, "reused": 30}


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


def test_gc_removes_only_unreferenced_old_artifacts_and_partial_writes(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    keep = store.ensure_artifact("a", "keep", {})
    drop = store.ensure_artifact("a", "drop", {})
    for ref in (keep, drop):
        store.write_item(ref, "i", ItemData({"v": np.ones(4)}))
    partial = f"{store.root}/a/keep/j/deadbeef"
    store.fs.makedirs(partial, exist_ok=True)
    store.write_run("r1", {"updated": "2026-01-01T00:00:00Z", "artifacts": ["a/keep"]})
    assert collect_garbage(store, grace_seconds=3600)["artifacts"] == []        # everything is young
    removed = collect_garbage(store, grace_seconds=0)
    assert removed["artifacts"] == ["a/drop"] and removed["partial_writes"] == [partial]
    assert [(i.stage, i.key, i.items) for i in list_artifacts(store)] == [("a", "keep", 1)]
    assert store.open(keep).read("i").arrays["v"].sum() == 4


def test_fsspec_memory_url_works():
    store = ArtifactStore("memory://anomflow-test-store")
    ref = store.ensure_artifact("x", "k", {"params": {}})
    store.write_item(ref, "i", ItemData({"v": np.arange(5)}))
    assert store.open(ref).read("i").arrays["v"].tolist() == [0, 1, 2, 3, 4]
