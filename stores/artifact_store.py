"""A Zarr v3 store of artifacts, each ``<stage>/<key>``, each holding items addressed by content.

Layout (all keys relative to the store root)::

    <stage>/<key>/                      group; attrs = stage, version, params, models, upstream, created
    <stage>/<key>/<item>/<write_id>/    one write of one item: its arrays, one chunk each
    <stage>/<key>/<item>/<write_id>/_complete/   group written LAST; attrs = the item's JSON meta
    _runs/<run_id>/                     group; attrs = the run record (which artifacts back it)

Ragged per-image data (a variable number of boxes or masks) is one small array per item, first
axis = count (possibly 0). Only numeric and bool dtypes are stored; meta must be JSON.

Commit protocol: every writer writes into its own fresh ``write_id``, so two runs never touch the
same chunk, and an item is trusted only once its ``_complete`` marker exists. A run killed mid-write
leaves an incomplete write that readers ignore and ``gc`` removes; the next run recomputes it.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

COMPLETE = "_complete"
RUNS = "_runs"
_ALLOWED_KINDS = set("biuf")  # bool, signed/unsigned int, float


@dataclass(frozen=True)
class ArtifactRef:
    """Small, picklable pointer to an artifact; what Prefect tasks pass around instead of arrays."""

    stage: str
    key: str
    uri: str

    @property
    def path(self) -> str:
        return f"{self.stage}/{self.key}"


@dataclass
class ItemData:
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def _check_array(name: str, value: np.ndarray) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"array {name!r} has dtype {arr.dtype}; only bool/int/float go into the store")
    return np.ascontiguousarray(arr)


class ArtifactStore:
    """Reads and writes artifacts under a root URL (local path or fsspec URL such as ``s3://bucket/x``)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.root, exist_ok=True)
            self.zstore = LocalStore(self.root)
        else:
            self.zstore = FsspecStore.from_url(self.url, storage_options=storage_options)
        self._ensure_group("", {"anomflow_store": 1})

    def _ensure_group(self, path: str, attrs: dict[str, Any]) -> None:
        """Create a group unless it exists; losing the creation race to another run is fine."""
        try:
            zarr.open_group(self.zstore, path=path, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            try:
                zarr.open_group(self.zstore, path=path, mode="w-", attributes=attrs)
            except (zarr.errors.ContainsGroupError, FileExistsError):
                pass

    # ---------------------------------------------------------------- artifacts
    def ref(self, stage: str, key: str) -> ArtifactRef:
        return ArtifactRef(stage, key, f"{self.url.rstrip('/')}/{stage}/{key}")

    def ensure_artifact(self, stage: str, key: str, record: dict[str, Any]) -> ArtifactRef:
        """Create the artifact group with its metadata if missing (idempotent; the key fixes the content)."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._ensure_group(f"{stage}/{key}", dict(record, stage=stage, key=key, created=created))
        return self.ref(stage, key)

    def artifact_record(self, stage: str, key: str) -> dict[str, Any]:
        return zarr.open_group(self.zstore, path=f"{stage}/{key}", mode="r").attrs.asdict()

    def iter_artifacts(self) -> Iterator[tuple[str, str]]:
        for stage_path in self._ls_dirs(self.root):
            stage = stage_path.rsplit("/", 1)[-1]
            if stage.startswith("_"):
                continue
            for key_path in self._ls_dirs(stage_path):
                yield stage, key_path.rsplit("/", 1)[-1]

    # ---------------------------------------------------------------- items
    def committed_items(self, ref: ArtifactRef) -> dict[str, str]:
        """item id -> write id of every complete item in the artifact (one listing)."""
        pattern = f"{self.root}/{ref.path}/*/*/{COMPLETE}/zarr.json"
        found: dict[str, str] = {}
        for hit in sorted(self.fs.glob(pattern)):
            parts = hit.split("/")
            item, write_id = parts[-4], parts[-3]
            found.setdefault(item, write_id)
        return found

    def write_item(self, ref: ArtifactRef, item: str, data: ItemData) -> str:
        """Write one item atomically: arrays into a fresh write id, then the completion marker."""
        write_id = uuid.uuid4().hex
        base = f"{ref.path}/{item}/{write_id}"
        group = zarr.open_group(self.zstore, path=base, mode="w")   # a fresh path: no other writer
        for name, value in data.arrays.items():
            arr = _check_array(name, value)
            # the write id is fresh, so nothing can be overwritten: skip zarr's existence and empty-chunk checks
            group.create_array(name, data=arr, chunks=tuple(max(1, n) for n in arr.shape) or "auto",
                               overwrite=True, config={"write_empty_chunks": True})
        _before_commit_hook(base)
        group.create_group(COMPLETE, attributes=data.meta)
        return write_id

    def read_item(self, ref: ArtifactRef, item: str, write_id: str) -> ItemData:
        base = f"{ref.path}/{item}/{write_id}"
        group = zarr.open_group(self.zstore, path=base, mode="r")
        meta = zarr.open_group(self.zstore, path=f"{base}/{COMPLETE}", mode="r").attrs.asdict()
        arrays = {name: arr[...] for name, arr in group.arrays()}
        return ItemData(arrays, meta)

    def read_array(self, ref: ArtifactRef, item: str, write_id: str, name: str) -> np.ndarray:
        """One array of one committed item (the others are not read)."""
        return zarr.open_array(self.zstore, path=f"{ref.path}/{item}/{write_id}/{name}", mode="r")[...]

    def open(self, ref: ArtifactRef) -> "ArtifactView":
        return ArtifactView(self, ref, self.committed_items(ref))

    # ---------------------------------------------------------------- runs
    def write_run(self, run_id: str, record: dict[str, Any]) -> None:
        zarr.open_group(self.zstore, path=f"{RUNS}/{run_id}", mode="w", attributes=record)

    def iter_runs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in self._ls_dirs(f"{self.root}/{RUNS}"):
            run_id = path.rsplit("/", 1)[-1]
            try:
                yield run_id, zarr.open_group(self.zstore, path=f"{RUNS}/{run_id}", mode="r").attrs.asdict()
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                continue  # a run record being written right now

    # ---------------------------------------------------------------- fs helpers
    def _ls_dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/") for e in entries if e["type"] == "directory")

    def du(self, path: str) -> int:
        try:
            return int(self.fs.du(f"{self.root}/{path}"))
        except FileNotFoundError:
            return 0

    def rm(self, path: str) -> None:
        self.fs.rm(f"{self.root}/{path}", recursive=True)


def _before_commit_hook(base: str) -> None:
    """Test seam: tests replace this to kill a process between the data and the marker."""


@dataclass
class ArtifactView:
    """An artifact with its committed items listed once; reads go straight to the right write."""

    store: ArtifactStore
    ref: ArtifactRef
    committed: dict[str, str]

    def has(self, item: str) -> bool:
        return item in self.committed

    def read(self, item: str) -> ItemData:
        if item not in self.committed:
            raise KeyError(f"{self.ref.path}: item {item} is not in the store (never computed or it failed)")
        return self.store.read_item(self.ref, item, self.committed[item])
