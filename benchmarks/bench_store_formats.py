"""How to commit a *batch* of per-image items to a Zarr v3 store: three mechanisms, local disk and S3 (moto).

(a) own packs  one Zarr group per batch (stacked + CSR arrays, one chunk each); the group's attributes, written
               after its arrays, are the commit record. This is stores/packs.py itself, the code the store runs.
(b) icechunk   fixed arrays per artifact (item axis 2**30, one chunk per item); one session + commit per batch;
               plus 2 concurrent writer processes on one branch, and commit time against repository history.
(c) sharding   one array per artifact-array, item axis 2**30, one shard = 8 items = one batch = one writer; the
               writer claims its shard slot by an exclusive create (O_EXCL / S3 PUT If-None-Match).
Ragged data (N boxes and N masks per item) is CSR in (a) and padded to MAXN rows per item in (b) and (c).

    python benchmarks/bench_store_formats.py [--batches 40] [--backends local,s3]

Writes benchmarks/results/store_formats.json and prints a markdown table. The moto server runs in a child
process on 127.0.0.1 (its request handling then does not share our GIL) and counts the HTTP requests it serves.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import icechunk
import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.core.buffer import default_buffer_prototype as proto
from zarr.core.group import AsyncGroup, GroupMetadata
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, StorePath

from stores import packs
from stores.packs import ItemData

K, C, E, HW, MAXN, CAP = 8, 32, 64, 256, 12, 2**30   # items/batch, embedding C x E x E, mask H=W, max boxes, slots
NAMES = ("embedding", "boxes", "masks")
ENC = {"name": "v2", "separator": "."}                 # chunk key "0.0.0.0": one file per chunk, no dir tree
METHODS = ("GET", "PUT", "HEAD", "POST", "DELETE", "LIST", "OTHER")
BUCKET, REGION = "bench", "us-east-1"
_YY, _XX = np.mgrid[:HW, :HW]


# ---------------------------------------------------------------- workload
@functools.lru_cache(maxsize=None)
def make_batch(seed: int, b: int) -> dict:
    """One seeded SAA-like batch: K items with an embedding, N in 0..MAXN boxes + elliptic masks, JSON meta.
    Cached (about 7 MB a batch): the same batch is written, verified and read back."""
    rng = np.random.default_rng([seed, b])
    ns = [int(n) for n in rng.integers(0, MAXN + 1, K)]
    out = {"emb": rng.standard_normal((K, C, E, E), dtype=np.float32), "ns": ns, "boxes": [], "masks": [],
           "ids": [hashlib.sha256(f"{seed}/{b}/{i}".encode()).hexdigest() for i in range(K)], "meta": []}
    for n in ns:
        c, r = rng.uniform(24, HW - 24, (n, 2)), rng.uniform(4, 24, (n, 2))
        out["boxes"].append(np.concatenate([c - r, c + r], 1).astype(np.float32))
        out["masks"].append(m := np.zeros((n, HW, HW), bool))
        for j, (x0, y0, x1, y1) in enumerate(out["boxes"][-1].astype(int) + [0, 0, 2, 2]):   # ellipse in its box
            xx, yy = (_XX[y0:y1, x0:x1] - c[j, 0]) / r[j, 0], (_YY[y0:y1, x0:x1] - c[j, 1]) / r[j, 1]
            m[j, y0:y1, x0:x1] = xx ** 2 + yy ** 2 <= 1
        out["meta"].append({"caption": "defect", "n": n, "size": [1024, 1024], "score": float(rng.random())})
    return out


def equal(item: tuple, batch: dict, i: int) -> bool:
    iid, emb, bx, mk, meta = item
    return (iid == batch["ids"][i] and meta == batch["meta"][i] and np.array_equal(emb, batch["emb"][i])
            and np.array_equal(bx, batch["boxes"][i]) and np.array_equal(mk, batch["masks"][i]))


def padded(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Ragged -> (K*MAXN, ...): item i owns rows i*MAXN.., NaN boxes / False masks after its N rows."""
    bx, mk = np.full((K * MAXN, 4), np.nan, np.float32), np.zeros((K * MAXN, HW, HW), bool)
    for i, n in enumerate(batch["ns"]):
        bx[i * MAXN:i * MAXN + n], mk[i * MAXN:i * MAXN + n] = batch["boxes"][i], batch["masks"][i]
    return bx, mk


# ---------------------------------------------------------------- zarr helpers
async def _put_group(store, path: str, attrs: dict) -> None:
    """Write only <path>/zarr.json (one PUT). create_group(overwrite=True) would delete_dir() the pack first."""
    await AsyncGroup(GroupMetadata(zarr_format=3), StorePath(store, path)).update_attributes(attrs)


async def _attrs(store, path: str) -> dict:
    buf = await store.get(f"{path}/zarr.json", prototype=proto())
    return json.loads(buf.to_bytes())["attributes"] if buf is not None else {}


async def _open(store, paths) -> dict:
    return dict(zip(NAMES, await asyncio.gather(*(za.open_array(store=store, path=p, zarr_format=3) for p in paths))))


async def _create_slot_arrays(store, shards: bool) -> dict:
    """Arrays addressed by batch slot k, for (b) and (c). Icechunk rejects v2-style chunk keys ("invalid zarr key
    format `boxes/7.0`"), so there the default "c/..." encoding stays."""
    specs = {"embedding": ((CAP, C, E, E), "float32", (1, C, E, E), 0.0),
             "boxes": ((CAP * MAXN, 4), "float32", (MAXN, 4), np.nan),
             "masks": ((CAP * MAXN, HW, HW), "bool", (MAXN, HW, HW), False)}
    kw = lambda ch: {"shards": (K * ch[0], *ch[1:]), "chunk_key_encoding": ENC} if shards else {}  # noqa: E731
    return {n: await za.create_array(store, name=n, shape=sh, dtype=dt, chunks=ch, fill_value=f, **kw(ch))
            for n, (sh, dt, ch, f) in specs.items()}


async def _read_slots(arrs: dict, attrs: dict, k: int, i: int | None) -> list[tuple]:
    """Items of batch slot k (all, or item i) from the slot-addressed arrays."""
    its = range(K) if i is None else [i]
    lo, hi = k * K + its[0], k * K + its[-1] + 1
    emb, bx, mk = await asyncio.gather(arrs["embedding"].getitem(slice(lo, hi)),
                                       arrs["boxes"].getitem(slice(lo * MAXN, hi * MAXN)),
                                       arrs["masks"].getitem(slice(lo * MAXN, hi * MAXN)))
    return [(attrs["ids"][it], emb[j], bx[j * MAXN:j * MAXN + attrs["ns"][it]],
             mk[j * MAXN:j * MAXN + attrs["ns"][it]], attrs["meta"][it]) for j, it in enumerate(its)]


# ---------------------------------------------------------------- (a) own packs, as shipped
class Packs:
    """(a) through stores/packs.py, the code the store runs: the pack encoded in memory, every file one PUT
    in flight at once (no existence checks), the pack record last."""

    name = "a_packs"

    def __init__(self, store, _):
        self.store, self.root = store, "saa/k0"

    def write(self, batch):
        path = f"{self.root}/{uuid.uuid4().hex}"
        items = [ItemData({"embedding": batch["emb"][i], "boxes": batch["boxes"][i], "masks": batch["masks"][i]},
                          batch["meta"][i]) for i in range(K)]
        packed, record = packs.encode(batch["ids"], items)
        packs.sync(packs.write_pack(self.store, path, packed, record))
        return path

    def read(self, loc, i=None):
        record = packs.sync(packs.read_record(self.store, loc))
        assert record is not None, f"uncommitted pack {loc}"
        rows = list(range(K)) if i is None else [i]
        got = packs.sync(packs.read_rows(self.store, loc, record, rows))
        return [(record["items"][r], g["embedding"], g["boxes"], g["masks"], record["meta"][r])
                for r, g in zip(rows, got)]


# ---------------------------------------------------------------- (c) sharding, one writer per shard
async def _claim(store, key: str) -> bool:
    """Exclusive create of an empty object; False when it exists. zarr's set_if_not_exists cannot say who won
    (LocalStore swallows FileExistsError; FsspecStore inherits the racy exists()+set() default)."""
    try:
        if isinstance(store, LocalStore):   # tmp file + os.link: FileExistsError if the key exists
            await store._set(key, proto().buffer.from_bytes(b""), exclusive=True)
        else:                               # S3 PUT If-None-Match: * (s3fs maps 412 to FileExistsError)
            await store.fs._pipe_file(f"{store.path}/{key}", b"", mode="create")
        return True
    except FileExistsError:
        return False


class Shards:
    name = "c_shards"

    def __init__(self, store, _):
        self.store, self.next = store, 0
        self.arrs = sync(_create_slot_arrays(StorePath(store, "saa/k0"), shards=True))

    async def _commit(self, batch):
        while not await _claim(self.store, f"saa/k0/_slots/{self.next}"):   # next-slot hint, probe upwards
            self.next += 1
        k, self.next = self.next, self.next + 1
        (bx, mk), r = padded(batch), slice(k * K * MAXN, (k + 1) * K * MAXN)
        await asyncio.gather(self.arrs["embedding"].setitem(slice(k * K, (k + 1) * K), batch["emb"]),
                             self.arrs["boxes"].setitem(r, bx), self.arrs["masks"].setitem(r, mk))
        rec = json.dumps({"ids": batch["ids"], "meta": batch["meta"], "ns": batch["ns"]}).encode()
        await self.store.set(f"saa/k0/_commits/{k}.json", proto().buffer.from_bytes(rec))   # commit record, last
        return k

    def write(self, batch):
        return sync(self._commit(batch))

    async def _read(self, k, i):
        rec = json.loads((await self.store.get(f"saa/k0/_commits/{k}.json", prototype=proto())).to_bytes())
        return await _read_slots(self.arrs, rec, k, i)

    def read(self, loc, i=None):
        return sync(self._read(loc, i))


# ---------------------------------------------------------------- (b) icechunk
def ice_storage(spec: tuple):
    if spec[0] == "local":
        return icechunk.local_filesystem_storage(spec[1])
    return icechunk.s3_storage(bucket=BUCKET, prefix=spec[2], region=REGION, endpoint_url=spec[1], allow_http=True,
                               access_key_id="test", secret_access_key="test", force_path_style=True)


def ice_write_session(session, k: int, batch: dict, light: bool = False) -> None:
    """Write batch into slot k of the session's arrays + group meta/k (light: boxes + meta only)."""
    async def go(st):
        arrs, (bx, mk), r = await _open(st, NAMES), padded(batch), slice(k * K * MAXN, (k + 1) * K * MAXN)
        jobs = [arrs["boxes"].setitem(r, bx)]
        if not light:
            jobs += [arrs["embedding"].setitem(slice(k * K, (k + 1) * K), batch["emb"]), arrs["masks"].setitem(r, mk)]
        await asyncio.gather(*jobs)
        await _put_group(st, f"meta/{k}", {"ids": batch["ids"], "meta": batch["meta"], "ns": batch["ns"]})
    sync(go(session.store))


class Ice:
    name = "b_icechunk"

    def __init__(self, _, spec, light=False):
        self.repo, self.next, self.light = icechunk.Repository.create(ice_storage(spec)), 0, light
        self.commit_ms, self.ro = [], None
        s = self.repo.writable_session("main")
        sync(_create_slot_arrays(s.store, shards=False))
        sync(_put_group(s.store, "meta", {}))
        s.commit("create arrays")

    def write(self, batch):
        k, self.next, s = self.next, self.next + 1, self.repo.writable_session("main")
        ice_write_session(s, k, batch, self.light)
        t = time.perf_counter()
        s.commit(f"batch {k}")
        self.commit_ms.append((time.perf_counter() - t) * 1e3)
        return k

    def read(self, loc, i=None):
        if self.ro is None:
            self.ro = self.repo.readonly_session(branch="main").store
            self.arrs = sync(_open(self.ro, NAMES))
        return sync(_read_slots(self.arrs, sync(_attrs(self.ro, f"meta/{loc}")), loc, i))


def _ice_writer(spec, w, n, overlap, barrier, q):
    """Child process: n commits to main, into slot 2i+w (disjoint) or i (overlap: the other writer's chunks)."""
    repo, res = icechunk.Repository.open(ice_storage(spec)), {"w": w, "ok": [], "conflicts": 0, "rebased": 0,
                                                              "failed": 0, "kinds": [], "ms": []}
    barrier.wait()
    for i in range(n):
        k, t, s = (i if overlap else 2 * i + w), time.perf_counter(), repo.writable_session("main")
        ice_write_session(s, k, make_batch(100 + w, i))
        try:
            s.commit(f"w{w} batch {i}")
            res["ok"].append((i, k))
        except icechunk.ConflictError:     # branch moved since the session began
            res["conflicts"] += 1
            try:
                s.commit(f"w{w} batch {i}", rebase_with=icechunk.ConflictDetector())
                res["rebased"] += 1
                res["ok"].append((i, k))
            except icechunk.RebaseFailedError as e:
                res["failed"] += 1
                res["kinds"] = sorted(set(res["kinds"]) | {str(c.conflict_type) for c in e.conflicts})
        res["ms"].append(round((time.perf_counter() - t) * 1e3, 1))
    q.put(res)


def ice_concurrency(spec_fn, n: int) -> list[dict]:
    out, ctx = [], mp.get_context("spawn")
    for overlap in (False, True):
        Ice(None, spec := spec_fn("conc-overlap" if overlap else "conc-disjoint"))   # repo + arrays
        barrier, q = ctx.Barrier(2), ctx.Queue()
        ps = [ctx.Process(target=_ice_writer, args=(spec, w, n, overlap, barrier, q)) for w in (0, 1)]
        [p.start() for p in ps]
        res = sorted((q.get(timeout=300) for _ in ps), key=lambda r: r["w"])
        [p.join() for p in ps]
        repo = icechunk.Repository.open(ice_storage(spec))
        ro = repo.readonly_session(branch="main").store
        arrs, intact = sync(_open(ro, NAMES)), 0
        for r in res:
            for i, k in r["ok"]:
                items, b = sync(_read_slots(arrs, sync(_attrs(ro, f"meta/{k}")), k, None)), make_batch(100 + r["w"], i)
                intact += all(equal(it, b, j) for j, it in enumerate(items))
        out.append({"mode": "overlapping slots" if overlap else "disjoint slots", "writers": res,
                    "commits_on_branch": len(list(repo.ancestry(branch="main"))) - 2,
                    "committed_batches": sum(len(r["ok"]) for r in res), "committed_batches_intact": intact})
    return out


def ice_growth(root: str, n: int) -> dict:
    """n light commits (boxes + meta only) on local disk: does commit time grow with the history?"""
    m, t_ms = Ice(None, ("local", root), light=True), []
    for b in range(n):
        ids = [hashlib.sha256(f"growth/{b}/{i}".encode()).hexdigest() for i in range(K)]   # unique, like real ids
        batch, t = dict(make_batch(0, b % 8), ids=ids), time.perf_counter()
        m.write(batch)
        t_ms.append((time.perf_counter() - t) * 1e3)
    snaps = sorted((p.stat().st_mtime_ns, p.stat().st_size) for p in Path(root, "snapshots").iterdir())
    return {"commits": n, **growth(t_ms, m.commit_ms), "snapshot_bytes_first": snaps[2][1],
            "snapshot_bytes_last": snaps[-1][1]}


def growth(t_ms, c_ms) -> dict:
    med = lambda x: round(float(np.median(x)), 2)  # noqa: E731
    return {"batch_ms_first5": med(t_ms[:5]), "batch_ms_last5": med(t_ms[-5:]),
            "commit_call_ms_first5": med(c_ms[:5]), "commit_call_ms_last5": med(c_ms[-5:])}


# ---------------------------------------------------------------- moto (child process, counts requests)
def _moto_main(counts, q, stop):
    import logging
    from moto.moto_server import werkzeug_app as wa
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    orig = wa.DomainDispatcherApplication.__call__

    def counted(self, env, start_response):
        m = env.get("REQUEST_METHOD", "")
        m = "LIST" if m == "GET" and "list-type" in env.get("QUERY_STRING", "") else m
        with counts.get_lock():
            counts[METHODS.index(m) if m in METHODS else len(METHODS) - 1] += 1
        return orig(self, env, start_response)
    wa.DomainDispatcherApplication.__call__ = counted
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    q.put(srv.get_host_and_port()[1])
    stop.wait()
    srv.stop()


def start_moto(ctx):
    import boto3
    counts, q, stop = ctx.Array("q", len(METHODS)), ctx.Queue(), ctx.Event()
    (proc := ctx.Process(target=_moto_main, args=(counts, q, stop), daemon=True)).start()
    ep = f"http://127.0.0.1:{q.get(timeout=60)}"
    boto3.client("s3", endpoint_url=ep, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name=REGION).create_bucket(Bucket=BUCKET)
    return proc, stop, counts, ep


# ---------------------------------------------------------------- measurement
def disk_usage(root: str) -> tuple[int, int]:
    """(inodes created = files + dirs below root, bytes = st_blocks*512 of all of them and of root)."""
    inodes, blocks = 0, os.lstat(root).st_blocks
    for d, dirs, files in os.walk(root):
        for x in dirs + files:
            inodes, blocks = inodes + 1, blocks + os.lstat(os.path.join(d, x)).st_blocks
    return inodes, blocks * 512


def run_one(cls, store, spec, backend, args, counts, local_root) -> dict:
    m, t_ms, reqs, locs, raw = cls(store, spec), [], [], [], 0
    total = lambda: np.array(counts[:]) if counts is not None else np.zeros(len(METHODS))  # noqa: E731
    for b in range(args.batches):
        batch = make_batch(args.seed, b)
        raw += batch["emb"].nbytes + sum(x.nbytes for x in batch["boxes"] + batch["masks"])
        c0, t = total(), time.perf_counter()
        locs.append(m.write(batch))
        t_ms.append((time.perf_counter() - t) * 1e3)
        reqs.append(total() - c0)
    ok = sum(equal(it, make_batch(args.seed, b), i) for b, loc in enumerate(locs) for i, it in enumerate(m.read(loc)))
    rnd, r_ms, r_req = random.Random(args.seed), [], []
    for _ in range(args.reads):
        b, i = rnd.randrange(args.batches), rnd.randrange(K)
        c0, t = total(), time.perf_counter()
        item = m.read(locs[b], i)[0]
        r_ms.append((time.perf_counter() - t) * 1e3)
        r_req.append((total() - c0).sum())
        assert equal(item, make_batch(args.seed, b), i)
    row = {"mechanism": cls.name, "backend": backend, "batches": args.batches, "items": args.batches * K,
           "commit_ms_median": float(np.median(t_ms)), "commit_ms_p90": float(np.percentile(t_ms, 90)),
           "read_ms_per_item": float(np.median(r_ms)), "items_verified": int(ok), "raw_bytes": raw}
    if counts is not None:
        row["requests_per_batch_median"] = float(np.median([r.sum() for r in reqs]))
        row["requests_per_item_read_median"] = float(np.median(r_req))
        row["requests_per_batch_by_method"] = {k: float(v) for k, v in zip(METHODS, np.mean(reqs, 0)) if v}
    if local_root:
        row["inodes"], row["disk_bytes"] = disk_usage(local_root)
        row["inodes_per_image"], row["disk_over_raw"] = row["inodes"] / row["items"], row["disk_bytes"] / raw
    if isinstance(m, Ice):
        row["growth"] = growth(t_ms, m.commit_ms)
        if local_root:   # includes the repository's creation and the "create arrays" commit
            row["files_per_commit_by_dir"] = {d: sum(len(f) for _, _, f in os.walk(os.path.join(local_root, d)))
                                              / args.batches for d in sorted(os.listdir(local_root))}
    return row


def table(rows: list[dict]) -> str:
    f = lambda r, k, fmt: "-" if r.get(k) is None else format(r[k], fmt)  # noqa: E731
    out = ["| mechanism | backend | commit ms median / p90 | inodes/image | disk/raw | read ms/item | verified "
           "| S3 req/batch | S3 req/item read |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['mechanism']} | {r['backend']} | {r['commit_ms_median']:.1f} / {r['commit_ms_p90']:.1f} "
            f"| {f(r, 'inodes_per_image', '.2f')} | {f(r, 'disk_over_raw', '.3f')} | {r['read_ms_per_item']:.1f} "
            f"| {r['items_verified']}/{r['items']} | {f(r, 'requests_per_batch_median', '.0f')} "
            f"| {f(r, 'requests_per_item_read_median', '.0f')} |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--backends", default="local,s3")
    ap.add_argument("--reads", type=int, default=20, help="random single-item reads timed per run")
    ap.add_argument("--conc-batches", type=int, default=6, help="commits per writer, icechunk 2-writer test")
    ap.add_argument("--growth-commits", type=int, default=300, help="light icechunk commits (local), growth test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "store_formats.json"))
    args = ap.parse_args()
    work, t0, ctx = tempfile.mkdtemp(prefix="anomflow-storefmt-"), time.perf_counter(), mp.get_context("spawn")
    moto = None
    res = {"config": {**vars(args), "items_per_batch": K, "embedding": [C, E, E], "mask_hw": HW, "max_boxes": MAXN},
           "versions": {"zarr": zarr.__version__, "icechunk": icechunk.__version__}, "runs": [],
           "icechunk_concurrency": {}, "icechunk_growth": None}
    try:
        for backend in args.backends.split(","):
            counts = None
            if backend == "s3":
                *moto, counts, ep = start_moto(ctx)
                # max_concurrency=1: else s3fs._cat_file HEADs before every whole-object GET (HEAD+LIST on a miss)
                opts = {"endpoint_url": ep, "key": "test", "secret": "test", "anon": False, "max_concurrency": 1,
                        "client_kwargs": {"region_name": REGION}}
                spec_fn = lambda p, ep=ep: ("s3", ep, p)  # noqa: E731
            else:
                spec_fn = lambda p: ("local", os.path.join(work, p))  # noqa: E731
            for cls in (Packs, Ice, Shards):
                root = os.path.join(work, f"{backend}-{cls.name}")
                store = (LocalStore(root) if backend == "local" else
                         FsspecStore.from_url(f"s3://{BUCKET}/{cls.name}", storage_options=opts))
                row = run_one(cls, store, spec_fn(f"{backend}-{cls.name}"), backend, args, counts,
                              root if backend == "local" else None)
                res["runs"].append(row)
                print(f"{cls.name:14s} {backend:5s} {row['commit_ms_median']:7.1f} ms/batch "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
            res["icechunk_concurrency"][backend] = ice_concurrency(spec_fn, args.conc_batches)
            if backend == "local" and args.growth_commits:
                res["icechunk_growth"] = ice_growth(os.path.join(work, "growth"), args.growth_commits)
            if moto:
                moto[1].set()
                moto[0].join(10)
                moto = None
    finally:
        if moto:
            moto[0].terminate()
        shutil.rmtree(work, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(table(res["runs"]))
    print("icechunk growth:", json.dumps(res["icechunk_growth"]))
    for backend, modes in res["icechunk_concurrency"].items():
        for c in modes:
            w = [{k: r[k] for k in ("conflicts", "rebased", "failed", "kinds")} | {"ok": len(r["ok"])}
                 for r in c["writers"]]
            print(f"icechunk 2 writers, {backend}, {c['mode']}: {c['committed_batches_intact']}/"
                  f"{c['committed_batches']} committed batches intact, {c['commits_on_branch']} commits; {w}")


if __name__ == "__main__":
    main()
