"""Backends for the store contract suite, and the worker functions its child processes run.

Every backend gets the same tests. Local and S3 stores are shared between processes, so kill and
concurrency tests use real processes (spawned, SIGKILL); a memory:// store lives in one process, so there
the writers are threads and a "kill" abandons the writer at the same point without any cleanup.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

import stores.artifact_store as artifact_store
from stores import ArtifactStore, ItemData
from stores.runs import RunSession
from tasks.engine.runner import StageDef, WorkItem, run_stage

STAGE = StageDef("square", 1, {"power": 2})


class Killed(BaseException):
    """A thread's stand-in for SIGKILL: nothing after the kill point runs, no cleanup (not an Exception)."""


@dataclass
class Backend:
    kind: str                       # local | memory | s3
    url: str
    options: dict | None = None
    env: dict | None = None

    def open(self, **kwargs) -> ArtifactStore:
        return ArtifactStore(self.url, self.options, **kwargs)

    def spawn(self, target, *args) -> "Worker":
        """Run ``target(url, options, *args)`` in a process (shared stores) or a thread (memory://)."""
        if self.kind == "memory":
            return Worker(thread=threading.Thread(target=_guarded, args=(target, self.url, self.options, *args)))
        proc = mp.get_context("spawn").Process(target=_in_child, args=(self.env or {}, target, self.url, self.options,
                                                                        *args))
        return Worker(proc=proc)


@dataclass
class Worker:
    proc: mp.Process | None = None
    thread: threading.Thread | None = None

    def start(self) -> "Worker":
        (self.proc or self.thread).start()
        return self

    def join(self, timeout: float = 180) -> int | None:
        """Exit code: 0 ok, -9 killed (a thread that hit Killed reports -9 too)."""
        if self.proc:
            self.proc.join(timeout)
            return self.proc.exitcode
        self.thread.join(timeout)
        return getattr(self.thread, "exitcode", 0)


def _in_child(env: dict, target, *args) -> None:
    os.environ.update(env)
    target(*args)


def _guarded(target, *args) -> None:
    try:
        target(*args)
    except Killed:
        threading.current_thread().exitcode = -signal.SIGKILL


def work(n: int) -> list[WorkItem]:
    return [WorkItem(f"item{i:03d}", f"img{i}", i) for i in range(n)]


def square(batch: list[WorkItem], delay: float = 0.0) -> list[ItemData]:
    time.sleep(delay * len(batch))
    return [ItemData({"v": np.full((4, 4), w.payload ** 2, np.int64), "ragged": np.arange(w.payload % 5)},
                     {"i": w.payload}) for w in batch]


def _no_hook(path: str) -> None:
    pass


def stage_worker(url: str, options: dict | None, n: int, out: str, kill_after: int | None = None,
                 delay: float = 0.0, batch_size: int = 3, liveness: float | None = None) -> None:
    """Run the square stage over n items; write its stats to ``out``; optionally die before commit k+1."""
    store = ArtifactStore(url, options, liveness_seconds=liveness)
    if kill_after is not None:
        commits = {"n": 0}
        in_process = threading.current_thread() is threading.main_thread()   # a spawned child, not a thread

        def hook(path: str) -> None:
            commits["n"] += 1
            if commits["n"] > kill_after:
                if in_process:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise Killed()

        artifact_store._before_commit_hook = hook
    run = RunSession(store, f"worker-{uuid.uuid4().hex[:8]}", {"method": "contract"})
    try:
        res = run_stage(store, STAGE, work(n), lambda b: square(b, delay), batch_size=batch_size, progress=False,
                        run_id=run.run_id)
    except Killed:
        run._stop.set()     # the heartbeat dies with the writer, as it would with the process; no status update
        raise
    finally:
        artifact_store._before_commit_hook = _no_hook
    run.stop("complete")
    with open(out, "w") as fh:
        json.dump({"computed": res.stats.computed, "reused": res.stats.reused, "failed": res.stats.failed}, fh)


def read_all(store: ArtifactStore, n: int) -> dict[str, int]:
    """item -> v[0, 0] for every committed item of the square artifact (asserting each is complete)."""
    ref = store.ref(STAGE.name, STAGE.key)
    view = store.open(ref)
    found = {}
    for item in view.items():
        data = view.read(item)
        i = data.meta["i"]
        assert data.arrays["v"].shape == (4, 4) and (data.arrays["v"] == i * i).all()
        assert data.arrays["ragged"].tolist() == list(range(i % 5))
        found[item] = int(data.arrays["v"][0, 0])
    return found
