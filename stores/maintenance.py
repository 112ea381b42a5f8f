"""Listing and garbage collection of a store that may be in use by running flows.

gc removes artifacts that no run record names, plus abandoned partial writes, but never anything
younger than the grace period: a run in flight may not have recorded its newest artifact yet.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from stores.artifact_store import COMPLETE, ArtifactStore


@dataclass
class ArtifactInfo:
    stage: str
    key: str
    params: dict
    items: int
    bytes: int
    created: str


def _age_seconds(created: str) -> float:
    try:
        then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return float("inf")
    return time.time() - then.timestamp()


def list_artifacts(store: ArtifactStore, with_bytes: bool = True) -> list[ArtifactInfo]:
    infos = []
    for stage, key in store.iter_artifacts():
        try:
            record = store.artifact_record(stage, key)
        except Exception:  # noqa: BLE001 - a group being created right now
            continue
        ref = store.ref(stage, key)
        infos.append(ArtifactInfo(stage, key, record.get("params", {}), len(store.committed_items(ref)),
                                  store.du(ref.path) if with_bytes else 0, record.get("created", "")))
    return infos


def referenced_artifacts(store: ArtifactStore, keep_runs: int | None = None) -> tuple[set[str], list[str]]:
    """Artifact paths named by the kept run records, and the run ids beyond ``keep_runs`` (oldest first)."""
    runs = sorted(store.iter_runs(), key=lambda r: r[1].get("updated", ""), reverse=True)
    kept = runs if keep_runs is None else runs[:keep_runs]
    dropped = [run_id for run_id, _ in runs[len(kept):]]
    paths = {p for _, rec in kept for p in rec.get("artifacts", [])}
    return paths, dropped


def _partial_writes(store: ArtifactStore, path: str) -> list[str]:
    """Write folders of an artifact that never got their completion marker."""
    partial = []
    for item_dir in store._ls_dirs(f"{store.root}/{path}"):
        for write_dir in store._ls_dirs(item_dir):
            if not store.fs.exists(f"{write_dir}/{COMPLETE}/zarr.json"):
                partial.append(write_dir)
    return partial


def collect_garbage(store: ArtifactStore, grace_seconds: float = 3600, keep_runs: int | None = None,
                    dry_run: bool = False) -> dict[str, list[str]]:
    """Remove unreferenced artifacts and stale partial writes older than the grace period."""
    referenced, dropped_runs = referenced_artifacts(store, keep_runs)
    removed: dict[str, list[str]] = {"artifacts": [], "partial_writes": [], "runs": []}
    for info in list_artifacts(store, with_bytes=False):
        path = f"{info.stage}/{info.key}"
        if _age_seconds(info.created) < grace_seconds:
            continue
        if path not in referenced:
            removed["artifacts"].append(path)
            if not dry_run:
                store.rm(path)
            continue
        for write_dir in _partial_writes(store, path):
            if _write_age(store, write_dir) >= grace_seconds:
                removed["partial_writes"].append(write_dir)
                if not dry_run:
                    store.fs.rm(write_dir, recursive=True)
    for run_id in dropped_runs:
        removed["runs"].append(run_id)
        if not dry_run:
            store.rm(f"_runs/{run_id}")
    return removed


def _write_age(store: ArtifactStore, path: str) -> float:
    """Seconds since a write folder was last modified; unknown (no mtime on this backend) counts as old."""
    try:
        return time.time() - store.fs.modified(path).timestamp()
    except (NotImplementedError, OSError):
        return float("inf")
