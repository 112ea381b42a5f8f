"""One store contract, every backend: local directory (SQLite index), memory://, and S3 (moto on 127.0.0.1).

Atomic commits under SIGKILL, concurrent writers that share the work, gc in a loop during writes, claims that
lapse with their run, run records updated in place, verify, and a complete read-back of everything committed.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest

from stores import ArtifactStore, ItemData
from stores.maintenance import collect_garbage, list_artifacts, verify
from stores.runs import RunSession
from tests.store_backends import STAGE, Backend, read_all, stage_worker

BACKENDS = ["local", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"))
    if request.param == "memory":
        return Backend("memory", f"memory://contract-{uuid.uuid4().hex[:8]}")
    s3 = request.getfixturevalue("s3_server")
    return Backend("s3", f"s3://{s3.bucket}/{uuid.uuid4().hex[:8]}", dict(s3.options), s3.env())


def _stats(path) -> dict:
    return json.loads(open(path).read())


def test_round_trip_keeps_dtypes_shapes_meta_and_ragged_layouts(backend):
    store = backend.open()
    ref = store.ensure_artifact("boxes", "k1", {"params": {"a": 1}})
    items = [(f"img{n}", ItemData({"boxes": np.random.default_rng(n).random((n, 4)).astype(np.float32),
                                   "masks": np.ones((n, 5 + n, 7), bool),            # flat: trailing dims vary
                                   "emb": np.full((3, 2), n, np.float64),             # stacked
                                   "count": np.int64(n)},                             # 0-d
                                  {"phrases": ["a"] * n, "height": 5})) for n in range(4)]
    assert store.write_batch(ref, items) == []
    view = store.open(ref)
    for name, data in items:
        back = view.read(name)
        for key, arr in data.arrays.items():
            assert back.arrays[key].dtype == np.asarray(arr).dtype and np.array_equal(back.arrays[key], arr), key
        assert back.meta == data.meta
    assert store.artifact_record("boxes", "k1")["params"] == {"a": 1}
    assert set(store.lookup(ref, ["img1", "img3", "nope"])) == {"img1", "img3"}
    with pytest.raises(TypeError, match="only bool/int/float"):
        store.write_batch(ref, [("bad", ItemData({"names": np.array(["a", None], dtype=object)}))])
    assert not view.has("bad")


def test_a_commit_is_atomic_under_kill_and_the_next_run_finishes(backend, tmp_path):
    store = backend.open(liveness_seconds=1)
    code = backend.spawn(stage_worker, 10, str(tmp_path / "a.json"), 2).start().join()
    assert code == -9                                   # died after 2 commits, inside the third
    assert len(read_all(store, 10)) == 6                # two packs of 3; the third pack's data is never seen
    time.sleep(1.2)                                     # the dead writer's heartbeat lapses
    backend.spawn(stage_worker, 10, str(tmp_path / "b.json"), None, 0.0, 3, 1.0).start().join()
    assert _stats(tmp_path / "b.json") == {"computed": 4, "reused": 6, "failed": 0}
    assert read_all(store, 10) == {f"item{i:03d}": i * i for i in range(10)}
    removed = collect_garbage(store, grace_seconds=0)
    assert len(removed["partial_writes"]) == 1 and removed["artifacts"] == []
    report = verify(store)
    assert report.ok and report.checked == 10 and report.partial == [] and report.duplicates == []


def test_two_concurrent_writers_share_the_work(backend, tmp_path):
    workers = [backend.spawn(stage_worker, 24, str(tmp_path / f"w{i}.json"), None, 0.05, 2).start() for i in range(2)]
    assert [w.join() for w in workers] == [0, 0]
    stats = [_stats(tmp_path / f"w{i}.json") for i in range(2)]
    assert sum(s["computed"] for s in stats) == 24      # no item computed twice
    assert all(s["computed"] + s["reused"] == 24 for s in stats)
    store = backend.open()
    assert read_all(store, 24) == {f"item{i:03d}": i * i for i in range(24)}
    assert verify(store).duplicates == []


def test_gc_in_a_loop_during_writes_loses_nothing(backend, tmp_path):
    store = backend.open()
    old = store.ensure_artifact("orphan", "k", {})       # named by no run: gc may take it
    store.write_batch(old, [("x", ItemData({"v": np.ones(2)}))])
    stop, rounds, removed = threading.Event(), [0], []

    def gc_loop():
        gc_store = backend.open()
        while not stop.is_set():
            removed.extend(collect_garbage(gc_store, grace_seconds=0)["artifacts"])
            rounds[0] += 1

    looper = threading.Thread(target=gc_loop)
    looper.start()
    try:
        workers = [backend.spawn(stage_worker, 18, str(tmp_path / f"w{i}.json"), None, 0.02, 3).start()
                   for i in range(2)]
        assert [w.join() for w in workers] == [0, 0]
    finally:
        stop.set()
        looper.join()
    assert rounds[0] >= 2 and removed == ["orphan/k"]
    assert read_all(store, 18) == {f"item{i:03d}": i * i for i in range(18)}
    report = verify(store)
    assert report.ok and report.checked == 18


def test_claims_lapse_when_their_run_dies(backend):
    store = backend.open(liveness_seconds=1)
    ref = store.ensure_artifact(STAGE.name, STAGE.key, STAGE.record())
    alive, dying = RunSession(store, "alive", {}), RunSession(store, "dying", {})
    assert store.claim(ref, ["a", "b"], "dying").granted == ["a", "b"]
    got = store.claim(ref, ["a", "b", "c"], "alive")
    assert got.held == ["a", "b"] and got.granted == ["c"]
    dying._stop.set()                                   # killed: no more heartbeats, status stays "running"
    time.sleep(1.3)
    assert store.claim(ref, ["a", "b"], "alive").granted == ["a", "b"]
    store.write_batch(ref, [("a", ItemData({"v": np.ones(1)}))], "alive")
    assert store.claim(ref, ["a"], "dying").done == ["a"]
    alive.stop("complete")


def test_run_records_are_updated_in_place(backend):
    store = backend.open()
    run = RunSession(store, "r1", {"method": "m"})
    stop, missing = threading.Event(), []

    def reader():
        while not stop.is_set():
            if "r1" not in {r.run_id for r in store.index.runs()}:
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(15):
        run.update(step=i)
        run.announce(store.ensure_artifact("s", f"k{i}", {}).path)
    stop.set()
    t.join()
    run.stop("complete")
    info = store.run_info("r1")
    assert missing == [] and info.status == "complete" and info.record["step"] == 14
    assert info.artifacts == sorted(f"s/k{i}" for i in range(15))


def test_gc_keep_days_drops_old_runs_then_what_only_they_used(backend, monkeypatch):
    store = backend.open()
    old_ref, new_ref = store.ensure_artifact("a", "old", {}), store.ensure_artifact("a", "new", {})
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 10 * 86400)   # a run from ten days ago
    RunSession(store, "old-run", {}).stop("complete")
    store.index.announce("old-run", old_ref.path)
    monkeypatch.setattr(time, "time", real_time)
    fresh = RunSession(store, "new-run", {})
    fresh.announce(new_ref.path)
    fresh.stop("complete")
    assert collect_garbage(store, grace_seconds=0, keep_days=30)["artifacts"] == []
    removed = collect_garbage(store, grace_seconds=0, keep_days=7)
    assert removed["runs"] == ["old-run"] and removed["artifacts"] == ["a/old"]
    assert [a.path for a in list_artifacts(store)] == ["a/new"]


def test_gc_spares_live_runs_young_artifacts_and_in_flight_packs(backend):
    store = backend.open()
    ref = store.ensure_artifact("a", "k", {})
    live = RunSession(store, "live", {})
    live.announce(ref.path)
    store.index.begin_pack(ref.path, "inflight", "live")     # a pack being written right now
    stray = store.ensure_artifact("b", "k", {})               # written by a live run that never announced it
    store.index.begin_pack(stray.path, "inflight", "live")
    assert collect_garbage(store, grace_seconds=3600) == {"runs": [], "artifacts": [], "partial_writes": []}
    assert collect_garbage(store, grace_seconds=0, keep_runs=0)["partial_writes"] == []   # its run is live
    assert "live" in {r.run_id for r in store.index.runs()}
    live.stop("failed")
    removed = collect_garbage(store, grace_seconds=0)
    assert removed["partial_writes"] == ["a/k/inflight"] and removed["artifacts"] == ["b/k"]


def test_verify_reports_corrupt_partial_and_duplicate_writes(backend):
    store = backend.open()
    ref = store.ensure_artifact("a", "k", {})
    store.write_batch(ref, [(f"i{n}", ItemData({"v": np.arange(50) * n})) for n in range(3)])
    store.write_batch(ref, [("i1", ItemData({"v": np.arange(50)}))])       # a second commit of i1
    store.index.begin_pack(ref.path, "never-committed", None)
    report = verify(store)
    assert report.ok and report.checked == 3 and len(report.duplicates) == 1 and len(report.partial) == 1
    pack = store.lookup(ref, ["i0"])["i0"].pack
    chunk = f"{store.root}/{ref.path}/{pack}/v/0.0"                     # the stacked 3 x 50 array's chunk
    raw = bytearray(store.fs.cat_file(chunk))
    raw[len(raw) // 2] ^= 0xFF
    store.fs.pipe_file(chunk, bytes(raw))
    report = verify(store)
    assert not report.ok and len(report.corrupt) == 3 and "i0" in report.corrupt[0]
    assert verify(store, sample=1).checked == 1


def test_input_hashes_are_cached_per_root(backend):
    store = backend.open()
    store.index.save_input_hashes("/data/line", {"a.png": (10, 123, "f" * 64)})
    store.index.save_input_hashes("/data/line", {"b.png": (11, 124, "e" * 64)})
    assert backend.open().index.input_hashes("/data/line") == {"a.png": (10, 123, "f" * 64),
                                                               "b.png": (11, 124, "e" * 64)}
    assert store.index.input_hashes("/elsewhere") == {}
