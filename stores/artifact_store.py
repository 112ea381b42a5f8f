"""A Zarr v3 store of artifacts, each ``<stage>/<key>``, each holding items addressed by content.

Layout (layout 2; keys relative to the store root)::

    zarr.json                       root group; attrs {"anomflow_store": 2}
    _index.sqlite                   the index of a local store (object stores: see stores/object_index.py)
    <stage>/<key>/zarr.json         the artifact's record: stage, version, params, models, upstream, created
    <stage>/<key>/<pack>/           one batch commit: packed arrays + the pack record (stores/packs.py)

Commit protocol for a batch: the index records the pack as pending (gc spares it), every array file is
written under a fresh pack id, then the pack record, then the index makes the items visible in one step.
A writer killed at any point leaves at most a pending pack that readers never see and gc removes; its
items are simply computed again. Readers ask the index for exactly the items they want.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
from zarr.storage import FsspecStore, LocalStore

from stores import packs
from stores.index import ClaimResult, Index, Location
from stores.sqlite_index import SqliteIndex
from stores.object_index import ObjectIndex
from stores.packs import ItemData

LAYOUT = 2
LIVENESS_SECONDS = float(os.environ.get("ANOMFLOW_LIVENESS_SECONDS", "120"))
_PACK_CACHE_BYTES = 256 << 20   # decoded packs a view keeps (whole packs up to this size are read at once)


class StoreError(RuntimeError):
    """A store that cannot be used as it is: wrong layout, not a store, not writable. Message says what to do."""


@dataclass(frozen=True)
class ArtifactRef:
    """Small, picklable pointer to an artifact; what Prefect tasks pass around instead of arrays."""

    stage: str
    key: str
    uri: str
    side: tuple[str, ...] = ()   # side inputs (e.g. "mask") in its lineage: they join its per-image item ids

    @property
    def path(self) -> str:
        return f"{self.stage}/{self.key}"


def _before_commit_hook(path: str) -> None:
    """Test seam: tests replace this to kill a process between a pack's data and its commit."""


def _open_backend(url: str, storage_options: dict | None):
    options = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        # s3fs sends a HEAD before every whole-object GET when max_concurrency > 1: one request per read instead
        options.setdefault("max_concurrency", 1)
    fs, root = fsspec.core.url_to_fs(url, **options)
    root = root.rstrip("/") or root
    if isinstance(fs, LocalFileSystem):
        if os.path.isfile(root):
            raise StoreError(f"store {url}: is a file, not a directory")
        os.makedirs(root, exist_ok=True)
        return fs, root, LocalStore(root)
    zstore = FsspecStore.from_url(url, storage_options=options)
    return fs, root, zstore


class ArtifactStore:
    """Reads and writes artifacts under a root URL (local path, ``memory://``, ``s3://bucket/prefix``)."""

    def __init__(self, url: str, storage_options: dict | None = None, liveness_seconds: float | None = None):
        self.url = str(url)
        self.liveness = LIVENESS_SECONDS if liveness_seconds is None else liveness_seconds
        self.fs, self.root, self.zstore = _open_backend(self.url, storage_options)
        self._check_layout()
        self.index: Index = SqliteIndex(self.root) if isinstance(self.fs, LocalFileSystem) \
            else ObjectIndex(self.fs, self.root)

    def _check_layout(self) -> None:
        meta = f"{self.root}/zarr.json"
        try:
            attrs = json.loads(self.fs.cat_file(meta)).get("attributes", {})
        except FileNotFoundError:
            self.fs.invalidate_cache(self.root)
            listing = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in listing}
            if "zarr.json" in names:        # another process created the store a moment ago
                attrs = json.loads(self.fs.cat_file(meta)).get("attributes", {})
            elif names:
                raise StoreError(f"store {self.url}: not an anomflow store (it holds other files and no zarr.json); "
                                 "point --store at an empty or new folder") from None
            else:
                self.fs.pipe_file(meta, json.dumps({"zarr_format": 3, "node_type": "group",
                                                    "attributes": {"anomflow_store": LAYOUT}}).encode())
                return
        layout = attrs.get("anomflow_store")
        if layout != LAYOUT:
            raise StoreError(
                f"store {self.url}: layout {layout} (one Zarr group per item write, anomflow before batch packs); "
                f"this anomflow reads layout {LAYOUT}. Migrate it with `anomflow store migrate {self.url} NEW_STORE` "
                "(copies every committed item), or start a fresh store with --store")

    # ---------------------------------------------------------------- artifacts
    def ref(self, stage: str, key: str) -> ArtifactRef:
        return ArtifactRef(stage, key, f"{self.url.rstrip('/')}/{stage}/{key}")

    def ensure_artifact(self, stage: str, key: str, record: dict[str, Any]) -> ArtifactRef:
        """Register the artifact with its record if missing (idempotent: the key fixes the content)."""
        ref = self.ref(stage, key)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        full = dict(record, stage=stage, key=key, created=created)
        if isinstance(self.index, SqliteIndex) and "stage" not in (self.index.artifact_record(ref.path) or {}):
            self.fs.makedirs(f"{self.root}/{ref.path}", exist_ok=True)
            self.fs.pipe_file(f"{self.root}/{ref.path}/zarr.json", json.dumps(
                {"zarr_format": 3, "node_type": "group", "attributes": full}).encode())
        self.index.ensure_artifact(ref.path, full)
        return ref

    def artifact_record(self, stage: str, key: str) -> dict[str, Any]:
        record = self.index.artifact_record(f"{stage}/{key}")
        if record is None:
            raise KeyError(f"artifact {stage}/{key} is not in the store")
        return record

    # ---------------------------------------------------------------- items
    def lookup(self, ref: ArtifactRef, items: list[str]) -> dict[str, Location]:
        return self.index.lookup(ref.path, items)

    def write_batch(self, ref: ArtifactRef, items: list[tuple[str, ItemData]], run_id: str | None = None) -> list[str]:
        """Commit items as packs (one per array signature, usually one). Returns items already committed."""
        groups: dict[tuple, list[tuple[str, ItemData]]] = defaultdict(list)
        for item, data in items:
            groups[packs.signature(data)].append((item, data))
        dupes: list[str] = []
        for group in groups.values():
            ids = [i for i, _ in group]
            packed, record = packs.encode(ids, [d for _, d in group])
            pack = uuid.uuid4().hex
            self.index.begin_pack(ref.path, pack, run_id)
            nbytes = packs.sync(packs.write_pack(self.zstore, f"{ref.path}/{pack}", packed, record))
            _before_commit_hook(f"{ref.path}/{pack}")
            dupes += self.index.commit_pack(ref.path, pack, ids, nbytes)
        return dupes

    def write_item(self, ref: ArtifactRef, item: str, data: ItemData, run_id: str | None = None) -> None:
        self.write_batch(ref, [(item, data)], run_id)

    def open(self, ref: ArtifactRef, cache_bytes: int | None = None) -> "ArtifactView":
        return ArtifactView(self, ref, cache_bytes)

    # ---------------------------------------------------------------- claims and runs
    def claim(self, ref: ArtifactRef, items: list[str], run_id: str) -> ClaimResult:
        return self.index.claim(ref.path, items, run_id, time.time() - self.liveness)

    def release(self, ref: ArtifactRef, items: list[str], run_id: str) -> None:
        self.index.release(ref.path, items, run_id)

    def run_info(self, run_id: str):
        """The run record (``stores.index.RunInfo``: status, heartbeat, the artifacts it named)."""
        found = [r for r in self.index.runs() if r.run_id == run_id]
        if not found:
            raise KeyError(f"run {run_id} is not recorded in store {self.url}")
        return found[0]

    def is_live(self, run) -> bool:
        """A run still running whose heartbeat is within the liveness window (``run``: RunInfo)."""
        return run.status == "running" and run.heartbeat is not None and run.heartbeat > time.time() - self.liveness

    # ---------------------------------------------------------------- fs helpers
    def rm(self, path: str) -> None:
        target = f"{self.root}/{path}"
        self.fs.invalidate_cache(target)
        try:
            self.fs.rm(target, recursive=True)
        except FileNotFoundError:
            pass


class ArtifactView:
    """Read access to one artifact: lookups go to the index, reads to the pack (a few decoded packs are kept)."""

    def __init__(self, store: ArtifactStore, ref: ArtifactRef, cache_bytes: int | None = None):
        """cache_bytes: decoded packs kept (default ``_PACK_CACHE_BYTES``); a streaming reader passes a few MB."""
        self.store, self.ref = store, ref
        self.cache_bytes = _PACK_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._where: dict[str, Location] = {}
        self._records: dict[str, dict] = {}
        self._decoded: OrderedDict[str, tuple[list[dict[str, np.ndarray]], int]] = OrderedDict()

    def prefetch(self, items: list[str]) -> None:
        """Look up many items in one index query (reads of them then need no lookup)."""
        missing = [i for i in items if i not in self._where]
        if missing:
            self._where.update(self.store.lookup(self.ref, missing))

    def items(self) -> list[str]:
        """Every committed item id (walks the artifact's index entries: for tests and tools, not stages)."""
        found = dict(self.store.index.iter_items(self.ref.path))
        self._where.update(found)
        return sorted(found)

    def has(self, item: str) -> bool:
        self.prefetch([item])
        return item in self._where

    def items_with_prefix(self, prefix: str) -> list[str]:
        found = self.store.index.items_with_prefix(self.ref.path, prefix)
        self._where.update(found)
        return sorted(found)

    def location(self, item: str) -> Location:
        if not self.has(item):
            raise KeyError(f"{self.ref.path}: item {item} is not in the store (never computed or it failed)")
        return self._where[item]

    def record(self, pack: str) -> dict[str, Any]:
        if pack not in self._records:
            record = packs.sync(packs.read_record(self.store.zstore, f"{self.ref.path}/{pack}"))
            if record is None:
                raise KeyError(f"{self.ref.path}: pack {pack} has no commit record (partial or removed write)")
            self._records[pack] = record
            for row, item in enumerate(record["items"]):   # a committed pack's items need no further lookups
                self._where.setdefault(item, Location(pack, row))
        return self._records[pack]

    def read(self, item: str, names: list[str] | None = None) -> ItemData:
        loc = self.location(item)
        record = self.record(loc.pack)
        arrays = self._pack_rows(loc.pack, record, loc.row, names)
        return ItemData(arrays if names is None else {n: arrays[n] for n in names}, record["meta"][loc.row])

    def meta(self, item: str) -> dict[str, Any]:
        """The item's meta from its pack record alone (no array is read)."""
        loc = self.location(item)
        return self.record(loc.pack)["meta"][loc.row]

    def read_array(self, item: str, name: str) -> np.ndarray:
        return self.read(item, [name]).arrays[name]

    def _pack_rows(self, pack: str, record: dict, row: int, names: list[str] | None) -> dict[str, np.ndarray]:
        """One row of a pack: small packs are decoded whole once and kept; large ones read only that row."""
        size = sum(v.get("nbytes", 0) for v in record["arrays"].values())
        path = f"{self.ref.path}/{pack}"
        if size > self.cache_bytes:
            return packs.sync(packs.read_rows(self.store.zstore, path, record, [row], names))[0]
        if pack not in self._decoded:
            rows = packs.sync(packs.read_rows(self.store.zstore, path, record, list(range(len(record["items"])))))
            self._decoded[pack] = (rows, size)
            while sum(s for _, s in self._decoded.values()) > self.cache_bytes and len(self._decoded) > 1:
                self._decoded.popitem(last=False)
        self._decoded.move_to_end(pack)
        return self._decoded[pack][0][row]
