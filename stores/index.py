"""The store's index: which items each artifact holds, and where; runs, claims and input hashes.

Every backend answers the same questions (the contract suite in tests/test_store_contract.py runs them all):
"which of these N items are committed" in O(N) whatever the artifact held before, pending and committed
packs for gc, run records with heartbeats, per-item claims that lapse with their run, and cached input
hashes. :class:`stores.sqlite_index.SqliteIndex` serves local stores; :class:`stores.object_index.ObjectIndex`
serves object stores (S3, memory://), where the index lives beside the data as small objects.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Location:
    pack: str
    row: int


@dataclass
class ArtifactSummary:
    path: str                 # <stage>/<key>
    record: dict[str, Any]
    created: float            # epoch seconds
    items: int
    packs: int
    nbytes: int               # compressed bytes written by its packs


@dataclass
class PackInfo:
    artifact: str
    pack: str
    status: str               # pending | committed
    run_id: str | None
    created: float
    items: int = 0


@dataclass
class RunInfo:
    run_id: str
    record: dict[str, Any]
    status: str
    heartbeat: float | None
    updated: float | None
    artifacts: list[str] = field(default_factory=list)


@dataclass
class ClaimResult:
    granted: list[str]        # this run computes these now
    held: list[str]           # a live run is computing these
    done: list[str]           # already committed


class Index(ABC):
    """What the artifact store needs from an index; times are epoch seconds."""

    # artifacts -----------------------------------------------------------------------------
    @abstractmethod
    def ensure_artifact(self, path: str, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def artifact_record(self, path: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def artifacts(self) -> list[ArtifactSummary]: ...

    @abstractmethod
    def drop_artifact(self, path: str, unless_named: bool = False) -> bool:
        """Forget an artifact; with ``unless_named``, only if no run names it (checked atomically where the
        backend can). Returns whether it was dropped."""

    # packs and items -----------------------------------------------------------------------
    @abstractmethod
    def begin_pack(self, path: str, pack: str, run_id: str | None) -> None:
        """Record a pack about to be written (gc spares it while young or while its run lives)."""

    @abstractmethod
    def commit_pack(self, path: str, pack: str, items: list[str], nbytes: int) -> list[str]:
        """Make the pack's items visible; returns the items that were already committed elsewhere."""

    @abstractmethod
    def lookup(self, path: str, items: Iterable[str]) -> dict[str, Location]: ...

    @abstractmethod
    def items_with_prefix(self, path: str, prefix: str) -> dict[str, Location]:
        """Items whose id starts with ``prefix`` (a 64-hex image id followed by '.')."""

    @abstractmethod
    def iter_items(self, path: str) -> Iterator[tuple[str, Location]]: ...

    @abstractmethod
    def packs(self, path: str) -> list[PackInfo]: ...

    @abstractmethod
    def pending_packs(self, older_than: float) -> list[PackInfo]: ...

    @abstractmethod
    def drop_pack(self, path: str, pack: str) -> None: ...

    @abstractmethod
    def duplicates(self, path: str) -> list[tuple[str, str]]:
        """(item, pack) pairs committed a second time (kept out of the index)."""

    # claims -------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, path: str, items: list[str], run_id: str, live_after: float) -> ClaimResult:
        """Claim uncommitted items for ``run_id`` unless a run whose heartbeat is newer than ``live_after`` holds them."""

    @abstractmethod
    def release(self, path: str, items: list[str], run_id: str) -> None: ...

    # runs ---------------------------------------------------------------------------------
    @abstractmethod
    def put_run(self, run_id: str, record: dict[str, Any], status: str) -> None:
        """Create or update a run record in place (no delete-then-write), refreshing its heartbeat."""

    @abstractmethod
    def heartbeat(self, run_id: str) -> None: ...

    @abstractmethod
    def announce(self, run_id: str, path: str) -> None:
        """Name an artifact the run is about to write into (before it writes)."""

    @abstractmethod
    def runs(self) -> list[RunInfo]: ...

    @abstractmethod
    def drop_run(self, run_id: str) -> None: ...

    # input hashes -------------------------------------------------------------------------
    @abstractmethod
    def input_hashes(self, root: str) -> dict[str, tuple[int, int, str]]:
        """relpath -> (size, mtime_ns, sha256) recorded for files under ``root``."""

    @abstractmethod
    def save_input_hashes(self, root: str, entries: dict[str, tuple[int, int, str]]) -> None: ...

    def close(self) -> None:
        """Release connections (optional)."""
