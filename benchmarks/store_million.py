"""Figures 6 and 7 of bench_store.py: a warm check of 1,000 items in an artifact of 1 M, and ls/gc beside it.

Artifacts are filled through ``ArtifactStore.write_batch`` (one scalar int64 per item, packs of
``pack_items``); on S3 (moto) only the first pack is written through the store and the rest of the index
entries are put straight into moto's backend (see store_moto.py), pointing at rows of that pack.
"""
from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from store_moto import absent_id, item_id  # noqa: E402
from stores import ArtifactStore, ItemData  # noqa: E402
from stores.keys import sha256_text  # noqa: E402
from stores.maintenance import collect_garbage, list_artifacts  # noqa: E402

S3_OPTS = {"key": "test", "secret": "test"}


def fill(store: ArtifactStore, stage: str, n: int, pack_items: int, run_id: str | None = None,
         upto: int | None = None):
    """An artifact of items item_id(0..n-1), written in packs; stops after ``upto`` items if given."""
    ref = store.ensure_artifact(stage, sha256_text(f"{stage}-{n}"), {"version": 1, "params": {"n": n}})
    for start in range(0, min(n, upto or n), pack_items):
        rows = range(start, min(n, start + pack_items))
        store.write_batch(ref, [(item_id(i), ItemData({"v": np.int64(i)})) for i in rows], run_id)
    return ref


def _query(n: int, q: int, seed: int = 0) -> list[str]:
    """q ids: q/2 committed (random over the whole artifact), the rest never written."""
    present = [item_id(i) for i in random.Random(seed).sample(range(n), min(q // 2, n))]
    return present + [absent_id(i) for i in range(q - len(present))]


def time_lookup(open_store, ref, n: int, q: int, repeats: int = 5) -> dict:
    """Median seconds of ``store.lookup`` of q ids (half committed) on a freshly opened store."""
    ids, times = _query(n, q), []
    for _ in range(repeats):
        store = open_store()
        start = time.perf_counter()
        found = store.lookup(ref, ids)
        times.append(time.perf_counter() - start)
        assert len(found) == min(q // 2, n), f"lookup found {len(found)} of {min(q // 2, n)}"
    return {"ids": q, "median_s": statistics.median(times), "all_s": times}


# ------------------------------------------------------------------------------------------------ local
def local(work: str, n: int, pack_items: int, q: int = 1000) -> dict:
    """Fig. 6 (local): lookup of q ids in an artifact of ``n`` items and in one of q items."""
    url = os.path.join(work, "store-million")
    store = ArtifactStore(url)
    start = time.perf_counter()
    big = fill(store, "bench_million", n, pack_items)
    fill_s = time.perf_counter() - start
    small = fill(store, "bench_thousand", q, q)
    out = {"backend": "local", "items": n, "pack_items": pack_items, "fill_s": fill_s,
           "index_bytes": sum(os.path.getsize(os.path.join(url, f)) for f in os.listdir(url)
                              if f.startswith("_index.sqlite")),
           "lookup_big": time_lookup(lambda: ArtifactStore(url), big, n, q),
           "lookup_small": time_lookup(lambda: ArtifactStore(url), small, q, q)}
    out["url"] = url
    return out


def _anomflow(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli.main", *args], capture_output=True, text=True,
                          cwd=HERE.parent)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"anomflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


def ls_gc(url: str, n: int) -> dict:
    """Fig. 7: ``store ls`` and ``store gc`` beside the n-item artifact, a few small artifacts and runs."""
    from stores.runs import RunSession

    store = ArtifactStore(url)
    existing = [a.path for a in store.index.artifacts()]
    for r in range(5):   # finished runs naming the artifacts there and a few small ones each
        run = RunSession(store, f"bench-run-{r}", {"flow": "bench"})
        for path in existing:
            run.announce(path)
        for k in range(2):
            run.announce(fill(store, f"bench_small_{r}_{k}", 100, 8, run.run_id).path)
        run.stop("complete")
    orphans = [fill(store, f"bench_orphan_{k}", 50, 8).path for k in range(2)]   # no run names them

    ls_wall, ls_out = _anomflow("store", "ls", "--store", url)
    start = time.perf_counter()
    infos = list_artifacts(store)
    ls_inproc = time.perf_counter() - start
    dry_wall, dry_out = _anomflow("store", "gc", "--store", url, "--grace-minutes", "0", "--dry-run")
    start = time.perf_counter()
    dry = collect_garbage(store, 0, dry_run=True)
    dry_inproc = time.perf_counter() - start
    gc_wall, gc_out = _anomflow("store", "gc", "--store", url, "--grace-minutes", "0")
    orphans.append(fill(store, "bench_orphan_late", 50, 8).path)
    time.sleep(0.01)
    start = time.perf_counter()
    real = collect_garbage(ArtifactStore(url), 0)
    gc_inproc = time.perf_counter() - start
    left = {a.path: a.items for a in list_artifacts(ArtifactStore(url))}
    return {"artifacts": len(infos), "items_listed": sum(a.items for a in infos), "runs": len(store.index.runs()),
            "ls_subprocess_s": ls_wall, "ls_inprocess_s": ls_inproc,
            "gc_dry_subprocess_s": dry_wall, "gc_dry_inprocess_s": dry_inproc,
            "gc_subprocess_s": gc_wall, "gc_inprocess_s": gc_inproc,
            "gc_dry_would_remove": dry["artifacts"], "gc_removed": real["artifacts"],
            "gc_cli_output": gc_out.strip().splitlines()[-1], "orphans": orphans,
            "big_artifact_kept_items": max(left.values()), "ls_last_line": ls_out.strip().splitlines()[-1]}


# ------------------------------------------------------------------------------------------------ s3
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoProcess:
    """store_moto.py in a subprocess: an S3 endpoint on 127.0.0.1 whose index entries we can inject."""

    def __init__(self):
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "store_moto.py"), str(self.port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def send(self, **cmd) -> str:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.send(op="stop")
        self.proc.wait(timeout=60)


def s3(n: int, q: int = 1000) -> dict:
    """Fig. 6 (S3 on moto): lookup of q ids in an artifact of n items (1 pack written, the rest injected)
    and in one of q items (written through the store)."""
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[k] = "test"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    moto = MotoProcess()
    try:
        opts = {**S3_OPTS, "endpoint_url": moto.endpoint}
        s3fs.S3FileSystem(**opts).mkdir("bench")
        url = "s3://bench/store"
        open_store = lambda: ArtifactStore(url, storage_options=opts)  # noqa: E731
        store = open_store()
        start = time.perf_counter()
        small = fill(store, "bench_thousand", q, q)
        write_small_s = time.perf_counter() - start
        first = min(100, n)
        big = fill(store, "bench_million", n, first, upto=first)
        pack = store.index.packs(big.path)[0].pack
        start = time.perf_counter()
        reply = moto.send(op="inject_index", bucket="bench", prefix=f"store/{big.path}/_index", start=first,
                          stop=n, pack=pack, rows=first)
        inject_s = time.perf_counter() - start
        out = {"backend": "s3 (moto in its own process)", "items": n, "written_through_store": first,
               "write_batch_small_s": write_small_s, "injected": reply, "inject_s": inject_s,
               "lookup_big": time_lookup(open_store, big, n, q), "lookup_small": time_lookup(open_store, small, q, q)}
        requests = lambda: json.loads(moto.send(op="counts"))  # noqa: E731 - HTTP requests since the last call
        requests()
        store.lookup(big, _query(n, q))
        out["requests_per_lookup"] = requests()
        ids = [absent_id(10**6 + i) for i in range(8)]   # a claimed batch of 8 new items, then its commit
        start = time.perf_counter()
        store.claim(big, ids, "bench-run")
        store.write_batch(big, [(i, ItemData({"v": np.int64(0)})) for i in ids], "bench-run")
        out["claim_and_write_batch_8"] = {"s": time.perf_counter() - start, "requests": requests()}
        out["diagnostics"] = _s3_diagnostics(opts, store, big, n, q, requests)
        return out
    finally:
        moto.close()


def _s3_diagnostics(opts: dict, store: ArtifactStore, ref, n: int, q: int, requests) -> dict:
    """Index GETs straight through s3fs, bypassing the store: s3fs defaults (``max_concurrency`` 10: a HEAD
    before each GET, and a LIST after the HEAD of a missing key; 20 ids only, as moto's LIST walks the
    whole bucket), ``max_concurrency=1`` (GET only), and that on a 64-connection pool (q ids)."""
    import s3fs

    from stores.object_index import _split

    paths = [f"{store.root}/{ref.path}/_index/{_split(i)}" for i in _query(n, q)]
    few = paths[:10] + paths[-10:]
    out = {}
    variants = {"s3fs_defaults": ({}, {}, few), "max_concurrency_1": ({}, {"max_concurrency": 1}, paths),
                "max_concurrency_1_pool_64": ({"config_kwargs": {"max_pool_connections": 64}},
                                              {"max_concurrency": 1}, paths)}
    for name, (fs_kw, cat_kw, which) in variants.items():
        fs = s3fs.S3FileSystem(**opts, **fs_kw, skip_instance_cache=True)
        requests()
        start = time.perf_counter()
        fs.cat(which, on_error="omit", **cat_kw)
        out[name] = {"ids": len(which), "s": time.perf_counter() - start, "requests": requests()}
    return out
