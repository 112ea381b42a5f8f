"""The index of an object store (S3, memory://): small JSON objects beside the data, no database.

Layout under the store root (``<a>`` = ``<stage>/<key>``; an item id ``H.T`` is split at its first dot)::

    <a>/_index/H/T            {"pack", "row"}: item H.T is committed (``_`` stands for an empty T)
    <a>/_packs/<pack>         {"status", "run_id", "created", "items", "nbytes"}
    <a>/_claims/H/T           the run id computing the item
    <a>/_dups/<pack>          items the pack committed a second time
    _runs/<run_id>.json       {"record", "status", "heartbeat", "updated", "artifacts"}
    _inputs/<digest>.json     {"root", "entries": {relpath: [size, mtime_ns, sha256]}}

A lookup of N items is N concurrent GETs (``fs.cat`` of a list), whatever the artifact held before. A claim is
an exclusive create (S3's If-None-Match: *), so two live runs never claim one item; taking over a lapsed claim
is a write and a read-back, where a lost race costs a duplicate computation, never a wrong result (packs are
immutable, and the index entry names one of them).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from stores.index import ArtifactSummary, ClaimResult, Index, Location, PackInfo, RunInfo

RUNS = "_runs"
INPUTS = "_inputs"


def _split(item: str) -> str:
    head, _, tail = item.partition(".")
    return f"{head}/{tail or '_'}"


def _join(rel: str) -> str:
    head, _, tail = rel.partition("/")
    return head if tail == "_" else f"{head}.{tail}"


class ObjectIndex(Index):
    def __init__(self, fs, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        self._run_lock = threading.Lock()

    def _p(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _cat_json(self, paths: list[str]) -> dict[str, Any]:
        if not paths:
            return {}
        raw = self.fs.cat(paths, on_error="omit")
        return {p: json.loads(b) for p, b in raw.items()}

    def _put_json(self, path: str, value: Any) -> None:
        self.fs.pipe(path, json.dumps(value).encode())

    def _put_many(self, values: dict[str, Any]) -> None:
        if values:
            self.fs.pipe({p: json.dumps(v).encode() for p, v in values.items()})

    def _ls(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)   # other processes write here: never answer from a cached listing
        try:
            return [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    # artifacts -----------------------------------------------------------------------------
    def ensure_artifact(self, path, record):
        meta = self._p(path, "zarr.json")
        if not self._cat_json([meta]):
            self._put_json(meta, {"zarr_format": 3, "node_type": "group",
                                  "attributes": {**record, "created_epoch": time.time()}})

    def artifact_record(self, path):
        got = self._cat_json([self._p(path, "zarr.json")])
        return next(iter(got.values()))["attributes"] if got else None

    def artifacts(self):
        out = []
        for stage in self._ls(self.root):
            if stage.startswith("_") or stage.endswith(".json"):
                continue
            for key in self._ls(self._p(stage)):
                path = f"{stage}/{key}"
                record = self.artifact_record(path)
                if record is None:
                    continue
                packs = [p for p in self.packs(path) if p.status == "committed"]
                infos = self._cat_json([self._p(path, "_packs", p.pack) for p in packs])
                out.append(ArtifactSummary(path, record, record.get("created_epoch", float("inf")),   # unknown age: young
                                           sum(p.items for p in packs), len(packs),
                                           sum(v.get("nbytes", 0) for v in infos.values())))
        return out

    def _rm(self, path: str) -> None:
        self.fs.invalidate_cache(path)
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def drop_artifact(self, path, unless_named=False):
        if unless_named and any(path in r.artifacts for r in self.runs()):
            return False
        self._rm(self._p(path))
        return True

    # packs and items -----------------------------------------------------------------------
    def begin_pack(self, path, pack, run_id):
        self._put_json(self._p(path, "_packs", pack), {"status": "pending", "run_id": run_id, "created": time.time()})

    def commit_pack(self, path, pack, items, nbytes):
        existing = self.lookup(path, items)
        dupes = [i for i, loc in existing.items() if loc.pack != pack]
        self._put_many({self._p(path, "_index", _split(item)): {"pack": pack, "row": row}
                        for row, item in enumerate(items) if item not in existing})
        if dupes:
            self._put_json(self._p(path, "_dups", pack), dupes)
        info = self._cat_json([self._p(path, "_packs", pack)]).get(self._p(path, "_packs", pack), {})
        self._put_json(self._p(path, "_packs", pack), {**info, "status": "committed", "items": len(items),
                                                       "nbytes": nbytes})
        claimed = list(self._claim_owners(path, items))
        if claimed:
            self.fs.rm([self._p(path, "_claims", _split(i)) for i in claimed])
        return dupes

    def lookup(self, path, items):
        wanted = {self._p(path, "_index", _split(i)): i for i in dict.fromkeys(items)}
        return {wanted[p]: Location(v["pack"], v["row"]) for p, v in self._cat_json(list(wanted)).items()}

    def items_with_prefix(self, path, prefix):
        head = prefix.rstrip(".")
        names = [f"{head}/{tail}" for tail in self._ls(self._p(path, "_index", head))]
        return {i: loc for i, loc in self.lookup(path, [_join(n) for n in names]).items() if i.startswith(prefix)}

    def iter_items(self, path):
        base = self._p(path, "_index") + "/"
        self.fs.invalidate_cache(self._p(path, "_index"))
        found = list(self.fs.find(self._p(path, "_index")))
        for item, loc in self.lookup(path, [_join(p[len(base):]) for p in found]).items():
            yield item, loc

    def packs(self, path):
        names = self._ls(self._p(path, "_packs"))
        got = self._cat_json([self._p(path, "_packs", n) for n in names])
        return [PackInfo(path, p.rsplit("/", 1)[-1], v["status"], v.get("run_id"), v.get("created", float("inf")),
                         v.get("items", 0)) for p, v in got.items()]

    def pending_packs(self, older_than):
        return [p for a in self._artifact_paths() for p in self.packs(a)
                if p.status == "pending" and p.created < older_than]

    def _artifact_paths(self) -> list[str]:
        return [f"{s}/{k}" for s in self._ls(self.root) if not s.startswith("_") and not s.endswith(".json")
                for k in self._ls(self._p(s))]

    def drop_pack(self, path, pack):
        for target in (self._p(path, pack), self._p(path, "_dups", pack), self._p(path, "_packs", pack)):
            self._rm(target)

    def duplicates(self, path):
        return [(item, p.rsplit("/", 1)[-1]) for p, items in
                self._cat_json([self._p(path, "_dups", n) for n in self._ls(self._p(path, "_dups"))]).items()
                for item in items]

    # claims -------------------------------------------------------------------------------
    def _claim_owners(self, path: str, items: list[str]) -> dict[str, str]:
        paths = {self._p(path, "_claims", _split(i)): i for i in items}
        raw = self.fs.cat(list(paths), on_error="omit") if paths else {}
        return {paths[p]: b.decode() for p, b in raw.items()}

    def claim(self, path, items, run_id, live_after):
        """Exclusive create of each claim object (S3 If-None-Match, memory's "xb"); a lapsed claim is taken over."""
        done = set(self.lookup(path, items))
        result = ClaimResult([], [], [i for i in items if i in done])
        contested: dict[str, str] = {}
        for item in (i for i in items if i not in done):
            try:
                self.fs.pipe_file(self._p(path, "_claims", _split(item)), run_id.encode(), mode="create")
                result.granted.append(item)
            except FileExistsError:
                contested[item] = ""
        owners = self._claim_owners(path, list(contested))
        beats = {r.run_id: r.heartbeat for r in self._runs_named(set(owners.values()) - {run_id})
                 if r.status == "running"}
        lapsed = []
        for item in contested:
            owner = owners.get(item)
            if owner == run_id:
                result.granted.append(item)
            elif owner is not None and (beats.get(owner) or 0) > live_after:
                result.held.append(item)
            else:
                lapsed.append(item)
        if lapsed:   # the owner died or finished without committing: take over, yield if another run did too
            self.fs.pipe({self._p(path, "_claims", _split(i)): run_id.encode() for i in lapsed})
            after = self._claim_owners(path, lapsed)
            result.granted += [i for i in lapsed if after.get(i) == run_id]
            result.held += [i for i in lapsed if after.get(i) != run_id]
        # An owner may have committed and dropped its claim between our lookup and our create: look again.
        late = set(self.lookup(path, result.granted)) if result.granted else set()
        if late:
            result.done += [i for i in result.granted if i in late]
            result.granted = [i for i in result.granted if i not in late]
            self.fs.rm([self._p(path, "_claims", _split(i)) for i in late])
        return result

    def release(self, path, items, run_id):
        mine = [i for i, owner in self._claim_owners(path, items).items() if owner == run_id]
        if mine:
            self.fs.rm([self._p(path, "_claims", _split(i)) for i in mine])

    # runs ---------------------------------------------------------------------------------
    def _run_path(self, run_id: str) -> str:
        return self._p(RUNS, f"{run_id}.json")

    def _update_run(self, run_id: str, **changes: Any) -> None:
        with self._run_lock:   # one process writes its own run record; threads take turns
            current = self._cat_json([self._run_path(run_id)]).get(self._run_path(run_id), {"artifacts": []})
            self._put_json(self._run_path(run_id), {**current, **changes, "heartbeat": time.time()})

    def put_run(self, run_id, record, status):
        self._update_run(run_id, record=record, status=status, updated=time.time())

    def heartbeat(self, run_id):
        self._update_run(run_id)

    def announce(self, run_id, path):
        with self._run_lock:
            current = self._cat_json([self._run_path(run_id)]).get(self._run_path(run_id), {"artifacts": []})
            if path in current["artifacts"]:
                return
            current["artifacts"] = sorted({*current["artifacts"], path})
            self._put_json(self._run_path(run_id), {**current, "heartbeat": time.time()})

    def _runs_named(self, run_ids: set[str]) -> list[RunInfo]:
        got = self._cat_json([self._run_path(r) for r in sorted(run_ids)])
        return [RunInfo(p.rsplit("/", 1)[-1][:-5], v.get("record", {}), v.get("status", "unknown"), v.get("heartbeat"),
                        v.get("updated"), v.get("artifacts", [])) for p, v in got.items()]

    def runs(self):
        return self._runs_named({n[:-5] for n in self._ls(self._p(RUNS)) if n.endswith(".json")})

    def drop_run(self, run_id):
        self._rm(self._run_path(run_id))

    # input hashes -------------------------------------------------------------------------
    def _inputs_path(self, root: str) -> str:
        return self._p(INPUTS, hashlib.sha256(root.encode()).hexdigest()[:32] + ".json")

    def input_hashes(self, root):
        got = self._cat_json([self._inputs_path(root)])
        entries = next(iter(got.values()), {}).get("entries", {})
        return {rel: tuple(v) for rel, v in entries.items()}

    def save_input_hashes(self, root, entries):
        merged = {**self.input_hashes(root), **entries}
        self._put_json(self._inputs_path(root), {"root": root, "entries": {k: list(v) for k, v in merged.items()}})

