"""Run records with a heartbeat: what keeps a running flow's artifacts and claims safe from gc and from others.

A run writes its record before its first stage, names each artifact before writing into it
(:meth:`RunSession.announce`), and refreshes its heartbeat from a background thread. While the heartbeat is
younger than the store's liveness window, gc spares everything the run names and other runs wait for the
items it claimed; once the process dies the heartbeat stops and both lapse.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

log = logging.getLogger("anomflow.store")
_SESSIONS: dict[str, "RunSession"] = {}


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class RunSession:
    def __init__(self, store, run_id: str, record: dict[str, Any], status: str = "running"):
        self.store, self.run_id = store, run_id
        self.record, self.status = dict(record), status
        self._announced: set[str] = set()
        self._stop = threading.Event()
        store.index.put_run(run_id, self.record, status)
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()
        _SESSIONS[run_id] = self

    def _beat(self) -> None:
        interval = max(0.5, self.store.liveness / 4)
        while not self._stop.wait(interval):
            try:
                self.store.index.heartbeat(self.run_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the run
                log.warning("heartbeat of run %s failed: %s", self.run_id, exc)

    def announce(self, path: str) -> None:
        """Name an artifact this run is about to write into (before the first write)."""
        if path not in self._announced:
            self.store.index.announce(self.run_id, path)
            self._announced.add(path)

    def update(self, status: str | None = None, **fields: Any) -> None:
        self.status = status or self.status
        self.record.update(fields)
        self.store.index.put_run(self.run_id, self.record, self.status)

    def stop(self, status: str | None = None, **fields: Any) -> None:
        """Final status; the heartbeat stops (a finished run no longer holds claims)."""
        self._stop.set()
        _SESSIONS.pop(self.run_id, None)
        if status or fields:
            self.update(status, **fields)


def session(run_id: str) -> RunSession | None:
    return _SESSIONS.get(run_id)


def stop_session(run_id: str, status: str = "failed", **fields: Any) -> None:
    """Close a run that ended without finishing (an exception, Ctrl-C): its record says so."""
    found = _SESSIONS.get(run_id)
    if found is not None:
        found.stop(status, **fields)
