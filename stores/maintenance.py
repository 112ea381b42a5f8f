"""Listing, garbage collection and verification of a store that running flows may be writing to.

All three ask the index, never walk the items: ``ls`` and ``gc`` cost O(artifacts + runs + pending packs).

gc rules (each proved in tests/test_store_contract.py):
- run records older than ``keep_days`` (or beyond the newest ``keep_runs``) are dropped first, never a live one
  (heartbeat younger than the store's liveness window);
- an artifact no remaining run names is removed once it is older than the grace period;
- a pending pack (data written, never committed) is removed once older than the grace period and its run is
  not live;
- an unknown age counts as young.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

from stores.artifact_store import ArtifactStore
from stores.index import ArtifactSummary
from stores.packs import read_rows, sync


def list_artifacts(store: ArtifactStore) -> list[ArtifactSummary]:
    return sorted(store.index.artifacts(), key=lambda a: (a.path.split("/")[0], a.created))


def _runs_to_drop(store: ArtifactStore, keep_runs: int | None, keep_days: float | None) -> list[str]:
    now = time.time()
    runs = sorted(store.index.runs(), key=lambda r: r.updated or now, reverse=True)
    drop = []
    for n, run in enumerate(runs):
        if store.is_live(run):
            continue
        too_old = keep_days is not None and run.updated is not None and now - run.updated > keep_days * 86400
        too_many = keep_runs is not None and n >= keep_runs
        if too_old or too_many:
            drop.append(run.run_id)
    return drop


def collect_garbage(store: ArtifactStore, grace_seconds: float = 3600, keep_runs: int | None = None,
                    keep_days: float | None = None, dry_run: bool = False) -> dict[str, list[str]]:
    """Drop old run records, then unreferenced artifacts and stale pending packs older than the grace period."""
    removed: dict[str, list[str]] = {"runs": [], "artifacts": [], "partial_writes": []}
    removed["runs"] = _runs_to_drop(store, keep_runs, keep_days)
    if not dry_run:
        for run_id in removed["runs"]:
            store.index.drop_run(run_id)
    now = time.time()
    gone = set(removed["runs"])
    artifacts, pending = store.index.artifacts(), store.index.pending_packs(now + 1)
    # Runs are read after the listings: a run names an artifact before it creates or writes it, so anything
    # listed above that a run is about to use is already named here.
    runs = store.index.runs()
    referenced = {p for r in runs if r.run_id not in gone for p in r.artifacts}
    live = {r.run_id for r in runs if store.is_live(r)}
    referenced |= {p.artifact for p in pending if p.run_id in live}   # being written by a live run
    for art in artifacts:
        if art.path in referenced or now - art.created < grace_seconds:
            continue
        if dry_run or store.index.drop_artifact(art.path, unless_named=True):
            removed["artifacts"].append(art.path)
            if not dry_run:
                store.rm(art.path)
    for pack in pending:
        if pack.created >= now - grace_seconds or pack.run_id in live or pack.artifact in removed["artifacts"]:
            continue
        removed["partial_writes"].append(f"{pack.artifact}/{pack.pack}")
        if not dry_run:
            store.rm(f"{pack.artifact}/{pack.pack}")
            store.index.drop_pack(pack.artifact, pack.pack)
    return removed


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)       # "<artifact> <item>: reason"
    partial: list[str] = field(default_factory=list)       # "<artifact>/<pack> (pending since ...)"
    duplicates: list[str] = field(default_factory=list)    # "<artifact> <item> also in pack <pack>"

    @property
    def ok(self) -> bool:
        return not self.corrupt


def _unreadable(store: ArtifactStore, pack_path: str, record: dict, rows: list[tuple[str, int]]) -> list[str]:
    """Decode the rows (all at once; one by one only if that fails, to name the bad ones)."""
    try:
        sync(read_rows(store.zstore, pack_path, record, [r for _, r in rows]))
        return []
    except Exception:  # noqa: BLE001 - find which rows
        pass
    bad = []
    for item, row in rows:
        try:
            sync(read_rows(store.zstore, pack_path, record, [row]))
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            bad.append(f"{pack_path.rsplit('/', 1)[0]} {item}: {type(exc).__name__}: {exc}")
    return bad


def verify(store: ArtifactStore, sample: int | None = None, seed: int = 0) -> VerifyReport:
    """Read back every committed item (or ``sample`` of them): decodable, checksums intact, record consistent."""
    report = VerifyReport()
    targets = [(a.path, item, loc) for a in store.index.artifacts() for item, loc in store.index.iter_items(a.path)]
    if sample is not None and sample < len(targets):
        targets = random.Random(seed).sample(targets, sample)
    by_pack: dict[tuple[str, str], list] = defaultdict(list)
    for path, item, loc in targets:
        by_pack[(path, loc.pack)].append((item, loc.row))
    for (path, pack), rows in sorted(by_pack.items()):
        view = store.open(store.ref(*path.split("/", 1)))
        try:
            record = view.record(pack)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            report.corrupt += [f"{path} {item}: pack {pack}: {exc}" for item, _ in rows]
            report.checked += len(rows)
            continue
        report.checked += len(rows)
        good = []
        for item, row in rows:
            if row >= len(record["items"]) or record["items"][row] != item:
                report.corrupt.append(f"{path} {item}: the index points at row {row} of pack {pack}, "
                                      "which holds another item")
            else:
                good.append((item, row))
        report.corrupt += _unreadable(store, f"{path}/{pack}", record, good)
    for pack in store.index.pending_packs(time.time() + 1):
        report.partial.append(f"{pack.artifact}/{pack.pack} (pending, run {pack.run_id})")
    for art in store.index.artifacts():
        report.duplicates += [f"{art.path} {item} also in pack {pack}" for item, pack in store.index.duplicates(art.path)]
    return report
