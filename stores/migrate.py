"""Copy a layout-1 store (one Zarr group per item write) into a layout-2 store (batch packs + index).

Layout 1: ``<stage>/<key>/<item>/<write_id>/<array>`` with a ``<write_id>/_complete`` group, written last, whose
attributes are the item's meta; ``_runs/<run_id>`` groups with the run records. Only complete writes are
copied; one migration run record names every copied artifact, so gc keeps them.
"""
from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileSystem
import zarr
from zarr.storage import FsspecStore, LocalStore

from stores.artifact_store import ArtifactStore
from stores.packs import ItemData
from stores.runs import RunSession, new_run_id

BATCH = 64


def _complete_writes(fs, root: str, path: str) -> dict[str, str]:
    """item -> write id of each complete write (the first one, like layout 1's readers)."""
    found: dict[str, str] = {}
    for hit in sorted(fs.glob(f"{root}/{path}/*/*/_complete/zarr.json")):
        item, write_id = hit.split("/")[-4:-2]
        found.setdefault(item, write_id)
    return found


def migrate_v1(source_url: str, target: ArtifactStore) -> dict[str, int]:
    fs, root = fsspec.core.url_to_fs(source_url)
    root = root.rstrip("/")
    old = LocalStore(root) if isinstance(fs, LocalFileSystem) else FsspecStore.from_url(source_url)
    layout = zarr.open_group(old, mode="r").attrs.get("anomflow_store")
    if layout != 1:
        raise ValueError(f"{source_url}: layout {layout}, not layout 1; nothing to migrate")
    run = RunSession(target, "migrated-" + new_run_id(), {"method": "migrate", "source": source_url})
    counts = {"artifacts": 0, "items": 0}
    try:
        for stage_dir in fs.ls(root, detail=False):
            stage = stage_dir.rstrip("/").rsplit("/", 1)[-1]
            if stage.startswith("_") or not fs.isdir(stage_dir):
                continue
            for key_dir in fs.ls(stage_dir, detail=False):
                key = key_dir.rstrip("/").rsplit("/", 1)[-1]
                if not fs.isdir(key_dir):
                    continue
                record = zarr.open_group(old, path=f"{stage}/{key}", mode="r").attrs.asdict()
                record = {k: v for k, v in record.items() if k not in ("stage", "key", "created")}
                ref = target.ensure_artifact(stage, key, record)
                run.announce(ref.path)
                writes = _complete_writes(fs, root, f"{stage}/{key}")
                batch: list[tuple[str, ItemData]] = []
                for item, write_id in writes.items():
                    base = f"{stage}/{key}/{item}/{write_id}"
                    group = zarr.open_group(old, path=base, mode="r")
                    meta = zarr.open_group(old, path=f"{base}/_complete", mode="r").attrs.asdict()
                    batch.append((item, ItemData({n: a[...] for n, a in group.arrays()}, meta)))
                    if len(batch) == BATCH:
                        target.write_batch(ref, batch, run.run_id)
                        batch = []
                if batch:
                    target.write_batch(ref, batch, run.run_id)
                counts["artifacts"] += 1
                counts["items"] += len(writes)
    finally:
        run.stop("complete", migrated=counts)
    return counts
