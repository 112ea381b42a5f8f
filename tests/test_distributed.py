"""Stage batches on Dask workers (``tasks.engine.distributed``): a 2-worker LocalCluster of processes gives the
single-process maps, counts every model call across the workers, loads each model once per worker, reports
bad images alone, and never computes an item twice when two runs race on one store."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import tifffile

from stores import ArtifactStore, ItemData
from tasks.engine.context import RunContext
from tasks.engine.distributed import DaskBatches, cluster_client, worker_counters
from tasks.engine.runner import StageDef, WorkItem, run_stage
from tasks.engine.stage import declare_stage
from tests.flow_helpers import run_cli, run_saa, stage_counts

pytestmark = pytest.mark.timeout(240)   # a hang (a lost batch) fails instead of blocking the suite

STAGES = ["image_embedding", "grounding_detections", "defect_boxes", "defect_masks", "anomaly_map"]


@declare_stage("dask_count", 1, params=("log", "delay"))
def count_items(call, batch: list[WorkItem]) -> list[ItemData]:
    """Test stage: logs each computed item with its process; payload "die" kills the worker process."""
    if any(w.payload == "die" for w in batch):
        os._exit(13)
    time.sleep(call.params["delay"])
    call.state["batches"] = call.state.get("batches", 0) + 1   # per-process state, kept across batches
    call.detail["counted"] += len(batch)
    with open(call.params["log"], "a", encoding="utf-8") as fh:
        fh.write("".join(f"{w.item} {os.getpid()}\n" for w in batch))
    return [ItemData({"x": np.full(3, i, np.int32)}, {"pid": os.getpid(), "batch_no": call.state["batches"]})
            for i, w in enumerate(batch)]


def _counting(tmp_path, store_url: str, delay: float = 0.0, n: int = 8, payload=lambda i: "ok"):
    """(stage definition, bound call, work items) of ``count_items`` over ``n`` items."""
    params = {"log": str(tmp_path / "computed.log"), "delay": delay}
    call = count_items.call_for(RunContext(store_url, str(tmp_path)), params, {}, {})
    work = [WorkItem(f"item{i:02d}", f"image{i:02d}", payload(i)) for i in range(n)]
    return StageDef("dask_count", 1, params), call, work


def _computed(tmp_path) -> list[tuple[str, int]]:
    lines = (tmp_path / "computed.log").read_text().split("\n") if (tmp_path / "computed.log").exists() else []
    return [(item, int(pid)) for item, pid in (line.split() for line in lines if line)]


def _maps(folder) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): tifffile.imread(p) for p in sorted(folder.rglob("*.tiff"))}


def test_two_workers_give_the_single_process_maps_and_a_warm_rerun_makes_no_model_calls(
        synth_root, models_dir, tmp_path, counters):
    code, single, _ = run_saa(synth_root, str(tmp_path / "s1"), str(tmp_path / "o1"), models_dir,
                              "--save-maps", str(tmp_path / "m1"))
    single_calls = dict(counters.MODEL_CALLS)
    counters.reset_counters()
    code2, dist, output = run_saa(synth_root, str(tmp_path / "s2"), str(tmp_path / "o2"), models_dir,
                                  "--save-maps", str(tmp_path / "m2"), "--workers", "2")
    assert code == code2 == 0, output
    n = len(single["images"])
    assert stage_counts(dist) == stage_counts(single) and stage_counts(dist)["image_embedding"] == (n, 0)
    one, two = _maps(tmp_path / "m1"), _maps(tmp_path / "m2")
    assert len(one) == n and one.keys() == two.keys()
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert [i["score"] for i in dist["images"]] == [i["score"] for i in single["images"]]
    assert dist["metrics"] == single["metrics"]
    # every model call made on the workers is counted on the driver, as many as in one process
    assert dict(counters.MODEL_CALLS) == single_calls and single_calls["tiny-sam"] > 0
    executor = dist["executor"]
    assert executor["kind"] == "dask" and executor["workers"] == 2 and "stage batches run on Dask" in output
    assert len(executor["batches_per_worker"]) == 2        # both workers computed batches
    assert all(v <= 2 for v in counters.MODEL_LOADS.values())   # at most one load per worker
    per_worker = cluster_client("local:2").run(worker_counters)
    assert len(per_worker) == 2 and all(n <= 1 for w in per_worker.values() for n in w["loads"].values())
    assert sum(w["calls"].get("tiny-sam", 0) for w in per_worker.values()) >= single_calls["tiny-sam"]

    counters.reset_counters()
    code, warm, _ = run_saa(synth_root, str(tmp_path / "s2"), str(tmp_path / "o3"), models_dir, "--workers", "2")
    assert code == 0 and all(stage_counts(warm)[s] == (0, n) for s in STAGES)
    assert counters.total_calls() == 0 and sum(counters.MODEL_LOADS.values()) == 0
    assert warm["executor"]["batches_per_worker"] == {}


def test_a_bad_image_fails_alone_on_the_workers(tmp_path, models_dir):
    from tasks.datasets.synth import write_synthetic_mvtec

    root = tmp_path / "data"
    [cat] = write_synthetic_mvtec(str(root), categories=1, images=3, seed=2, size=64)
    bad = sorted((root / cat / "test").rglob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:200])     # hashes fine on the driver, fails to decode on a worker
    code, report, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, "--workers", "2")
    assert code == 3
    assert [f["path"] for f in report["failures"]] == [str(bad)]
    assert "truncated" in report["failures"][0]["reason"]
    assert len(report["images"]) == len(list((root / cat / "test").rglob("*.png"))) - 1
    assert stage_counts(report)["image_embedding"][0] == len(report["images"])


@pytest.mark.parametrize("extra, needles", [
    (("--workers", "0"), ["--workers 0", "at least 1"]),
    (("--workers", "2", "--dask-address", "tcp://127.0.0.1:8786"), ["--dask-address", "--workers", "exclude"]),
    (("--dask-address", "127.0.0.1:8786"), ["--dask-address", "tcp://HOST:8786"]),
    (("--dask-resources", "GPU=1"), ["--dask-resources needs a cluster"]),
    (("--workers", "1", "--dask-resources", "GPU"), ["--dask-resources 'GPU'", "NAME=AMOUNT"]),
    (("--workers", "1", "--store", "memory://x"), ["--store memory://x", "in-memory"]),
    (("--dask-address", "tcp://127.0.0.1:9"), ["--dask-address tcp://127.0.0.1:9", "cannot connect"]),
])
def test_cluster_options_are_checked_before_any_work(tmp_path, models_dir, synth_root, extra, needles):
    import dask

    args = ["run", "saa", "--dataset", "mvtec", "--root", synth_root, "--out", str(tmp_path / "o"),
            "--models-dir", models_dir, "--allow-tiny", "--no-progress"]
    if "--store" not in extra:
        args += ["--store", str(tmp_path / "s")]
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, output = run_cli(*args, *extra)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), output
    assert not (tmp_path / "o").exists()


def test_racing_runs_on_workers_compute_each_item_once(tmp_path):
    """Two runs of one stage over the same items (in opposite orders) on one store, both on the workers."""
    url = str(tmp_path / "store")
    ArtifactStore(url)          # created before the race (the store's creation itself is not what is tested)
    definition, call, work = _counting(tmp_path, url, delay=0.15, n=12)
    client = cluster_client("local:2")
    start, results = threading.Barrier(2), {}

    def race(name: str, items: list[WorkItem]) -> None:
        start.wait()
        results[name] = run_stage(ArtifactStore(url), definition, items, call, batch_size=2, progress=False,
                                  executor=DaskBatches(client, "local:2", url))

    threads = [threading.Thread(target=race, args=("a", work)), threading.Thread(target=race, args=("b", work[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    computed = _computed(tmp_path)
    assert sorted(item for item, _ in computed) == sorted(w.item for w in work)      # each exactly once
    assert os.getpid() not in {pid for _, pid in computed}                          # on the workers
    a, b = results["a"].stats, results["b"].stats
    assert a.computed > 0 and b.computed > 0 and a.computed + b.computed == len(work)
    assert a.computed + a.reused == b.computed + b.reused == len(work) and a.failed == b.failed == 0
    assert a.detail["counted"] + b.detail["counted"] == len(work)          # stage counts come back


def test_workers_keep_their_call_state_across_batches_and_plain_functions_run_here(tmp_path):
    url = str(tmp_path / "store")
    store = ArtifactStore(url)
    definition, call, work = _counting(tmp_path, url, n=12)
    result = run_stage(store, definition, work, call, batch_size=2, progress=False,
                       executor=DaskBatches(cluster_client("local:2"), "local:2", url))
    assert result.stats.computed == 12 and result.stats.detail == {"counted": 12}
    view = store.open(result.ref)
    metas = [view.meta(w.item) for w in work]
    assert max(m["batch_no"] for m in metas) > 1        # a worker's second batch saw its first batch's state

    plain = StageDef("dask_plain", 1, {})
    seen = []
    result = run_stage(store, plain, work[:3], lambda batch: seen.extend(os.getpid() for _ in batch) or
                       [ItemData({"x": np.zeros(1)}) for _ in batch], progress=False,
                       executor=DaskBatches(cluster_client("local:2"), "local:2", url))
    assert result.stats.computed == 3 and seen == [os.getpid()] * 3


def test_a_dying_worker_fails_its_batch_with_a_reason_and_the_run_goes_on(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    url = str(tmp_path / "store")
    store = ArtifactStore(url)
    definition, call, work = _counting(tmp_path, url, n=6, payload=lambda i: "die" if i == 0 else "ok")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        result = run_stage(store, definition, work, call, batch_size=2, progress=False,
                           executor=DaskBatches(client, cluster.scheduler_address, url))
    stats, failures = result.stats, result.failures
    assert {"image00", "image01"} <= set(failures)        # the batch whose worker died
    assert all("Dask worker" in r and "died" in r and "KilledWorker" in r for r in failures.values())
    assert stats.computed + stats.failed == len(work) and stats.computed >= 2   # later batches on the new worker
    committed = store.lookup(result.ref, [w.item for w in work])
    assert {w.image for w in work if w.item not in committed} == set(failures)
    # nothing is held: a run without the poison computes exactly what failed
    definition, call, again = _counting(tmp_path, url, n=6)
    rerun = run_stage(ArtifactStore(url), definition, again, call, batch_size=2, progress=False)
    assert rerun.stats.computed == len(failures) and rerun.stats.reused == len(work) - len(failures)
