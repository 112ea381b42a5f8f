"""Stage batches on Dask workers: the driver claims, the workers compute and commit, the driver counts.

    ctx = RunContext(store_url, models_dir, dask_address="tcp://scheduler:8786")   # or "local:2"
    ctx.executor   # -> DaskBatches.connect(...), used by every stage of the run

The driver (``tasks.engine.runner.run_stage``) looks the items up, claims each batch under the run's id and
hands it to :meth:`DaskBatches.submit`. The batch goes to a worker with a copy of the bound stage call (the
declaration by reference, the run context without its opened store, parameters, model names, upstream refs);
the worker opens the store from its URL, computes the batch and commits it under the same run id
(:func:`tasks.engine.runner.compute_and_commit`), so no other run takes those items and a rerun finds them.

Per worker process: one opened store per URL, the models memoised by ``tasks.models.loading`` (each loaded
once), and one bound call per (artifact, run) so that per-process state such as the SAM decode memo lasts
across batches. A worker runs one batch at a time (the model-call counters are per process, so a batch's
counts are exact only when batches do not overlap): give a worker process one thread, ``--nthreads 1``, and
start more processes for more parallelism.

What comes back into the run: each batch's committed count, per-item failures, stage counts, and the
worker's model calls, loads and load seconds, which the driver adds to its own ``tasks.models.calls``
counters (so the report and the tests count the workers' work). A worker that dies while computing a
batch (``KilledWorker``) fails that batch's images with a reason that says so.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from stores import ArtifactRef, ArtifactStore
from tasks.engine.runner import BatchExecutor, BatchOutcome, WorkItem, compute_and_commit, describe_error
from tasks.models import calls

log = logging.getLogger("anomflow.engine")

IN_FLIGHT_PER_WORKER = 2   # batches queued per worker: enough to keep it busy, few enough to cancel quickly
LOCAL_PREFIX = "local:"
ADDRESS_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


class DaskSetupError(RuntimeError):
    """The cluster cannot run this store's stages (unreachable, cannot see the store, lacks resources)."""


# ------------------------------------------------------------------------------------------------ worker side
@dataclass
class WorkerOutcome(BatchOutcome):
    """A batch outcome as a worker returns it: also the models it loaded, where and how long it ran."""

    model_loads: dict[str, int] = field(default_factory=dict)
    worker: str = ""
    seconds: float = 0.0


_STORES: dict[str, ArtifactStore] = {}              # per worker process: store URL -> opened store
_CALLS: OrderedDict[tuple[str, str], Any] = OrderedDict()   # (artifact path, run id) -> bound StageCall
_MAX_CALLS = 4                                       # a run's stages come one after another; older ones go
_BATCH_LOCK = threading.Lock()                       # one batch at a time per process (exact counters)


def _delta(after: Counter, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _worker_store(url: str) -> ArtifactStore:
    if url not in _STORES:
        _STORES[url] = ArtifactStore(url)
    return _STORES[url]


def _worker_call(ref: ArtifactRef, run_id: str, shipped, store: ArtifactStore):
    """This process's bound call for (artifact, run): the first one shipped, kept with its state and views."""
    key = (ref.path, run_id)
    if key not in _CALLS:
        shipped.ctx.__dict__["store"] = store   # what ctx.store (a cached_property) would open: the shared one
        _CALLS[key] = shipped
        while len(_CALLS) > _MAX_CALLS:
            _CALLS.popitem(last=False)
    _CALLS.move_to_end(key)
    return _CALLS[key]


def run_batch(store_url: str, ref: ArtifactRef, run_id: str, call, batch: list[WorkItem]) -> WorkerOutcome:
    """On a worker: compute and commit one claimed batch; return its outcome with this process's model counts."""
    with _BATCH_LOCK:
        store = _worker_store(store_url)
        bound = _worker_call(ref, run_id, call, store)
        model_calls, loads, load_seconds = dict(calls.MODEL_CALLS), dict(calls.MODEL_LOADS), dict(calls.LOAD_SECONDS)
        start = time.perf_counter()
        done = compute_and_commit(store, ref, run_id, bound, batch)
        out = WorkerOutcome(done.computed, done.failed, done.detail,
                            model_calls=_delta(calls.MODEL_CALLS, model_calls),
                            load_seconds=_delta(calls.LOAD_SECONDS, load_seconds),
                            model_loads=_delta(calls.MODEL_LOADS, loads),
                            worker=_worker_address(), seconds=time.perf_counter() - start)
    return out


def worker_counters() -> dict[str, dict]:
    """This process's model counters (``client.run(worker_counters)`` asks every worker)."""
    return {"calls": dict(calls.MODEL_CALLS), "loads": dict(calls.MODEL_LOADS),
            "load_seconds": dict(calls.LOAD_SECONDS)}


def _worker_address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except ValueError:   # not inside a Dask task (tests call run_batch directly)
        return ""


def _sees_file(store_url: str, name: str) -> str | None:
    """On a worker: None if the store's root holds ``name``, else why not (nothing is created)."""
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(store_url)
        fs.invalidate_cache()
        return None if fs.exists(f"{root.rstrip('/')}/{name}") else "does not see the driver's store"
    except Exception as exc:  # noqa: BLE001 - the reason goes into the setup error
        return f"cannot open the store ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------------------------ driver side
_CLIENTS: dict[Any, Any] = {}        # address or (n, resources) -> (client, cluster or None), per process
_CHECKED: set[tuple[str, str]] = set()
_CONNECT_LOCK = threading.Lock()


def _shippable(compute) -> bool:
    from tasks.engine.stage import Stage, StageCall
    return isinstance(compute, StageCall) and isinstance(compute.stage, Stage)


def _close_all() -> None:
    """At exit: close the clients and the local clusters (a worker slow to exit is killed, quietly)."""
    if any(cluster is not None for _, cluster in _CLIENTS.values()):
        logging.getLogger("distributed").setLevel(logging.ERROR)
    for client, cluster in list(_CLIENTS.values()):
        for thing in (client, cluster):
            try:
                if thing is not None:
                    thing.close()
            except Exception:  # noqa: BLE001 - interpreter exit: best effort
                pass
    _CLIENTS.clear()


def parse_address(address: str) -> tuple[str, int | None]:
    """("local", N) for ``local:N``, else (address, None); ValueError names what is wrong."""
    if address.startswith(LOCAL_PREFIX):
        count = address[len(LOCAL_PREFIX):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{address!r}: local:N needs a worker count N >= 1")
        return "local", int(count)
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ADDRESS_SCHEMES or not rest:
        raise ValueError(f"{address!r} is not a Dask scheduler address like tcp://HOST:8786")
    return address, None


def cluster_client(address: str, resources: tuple[tuple[str, float], ...] = ()):
    """This process's client for ``address``: a connection to a scheduler, or a LocalCluster of processes
    (one thread each; its workers offer ``resources``) started on first use and closed at exit."""
    import dask
    from distributed import Client, LocalCluster

    kind, count = parse_address(address)
    key = (count, tuple(resources)) if kind == "local" else address
    with _CONNECT_LOCK:
        found = _CLIENTS.get(key)
        if found is not None and found[0].status == "running":
            return found[0]
        if kind == "local":
            logging.getLogger("distributed").setLevel(logging.WARNING)   # its scheduler's chatter is not ours
            # glibc malloc settings given to this process reach the workers (Dask's own trim default would win);
            # a worker that keeps its freed memory must not be paused for it, so it gets no memory limit then
            malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **malloc}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", resources=dict(resources) or None,
                                       **({"memory_limit": 0} if malloc else {}))
            client = Client(cluster)
        else:
            cluster, client = None, Client(address)
        _CLIENTS[key] = (client, cluster)
        atexit.unregister(_close_all)     # (re)registered last, so it runs before distributed's own exit hooks
        atexit.register(_close_all)
        return client


def _check_cluster(client, address: str, store_url: str, resources: tuple[tuple[str, float], ...]) -> None:
    """Every current worker can import anomflow and sees the driver's store; some worker offers ``resources``."""
    if (address, store_url) in _CHECKED:
        return
    if store_url.startswith("memory://"):
        raise DaskSetupError(f"store {store_url}: an in-memory store lives in one process; Dask workers need a "
                             "shared filesystem path or an object store (s3://...)")
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        log.warning("Dask cluster %s has no workers yet: batches wait until workers join", address)
        return
    if resources:
        offered = [w for w in workers.values()
                   if all(w.get("resources", {}).get(name, 0) >= amount for name, amount in resources)]
        if not offered:
            want = ",".join(f"{n}={a:g}" for n, a in resources)
            raise DaskSetupError(f"no worker of {address} offers resources {want}; start GPU workers with "
                                 f"`dask worker SCHEDULER --nthreads 1 --resources {want}`")
    store = ArtifactStore(store_url)
    probe = f".anomflow-dask-probe-{uuid.uuid4().hex}"
    store.fs.pipe_file(f"{store.root}/{probe}", b"")
    try:
        answers = client.run(_sees_file, store_url, probe, on_error="return")
    finally:
        store.rm(probe)
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            raise DaskSetupError(f"Dask worker {worker} cannot run anomflow tasks ({describe_error(answer)}); "
                                 "install anomflow in the workers' environment")
        if answer is not None:
            raise DaskSetupError(f"Dask worker {worker} {answer} at {store_url}: workers need the store on a "
                                 "shared filesystem (same path everywhere) or an object store (s3://...)")
    _CHECKED.add((address, store_url))


class DaskBatches(BatchExecutor):
    """Claimed batches computed on Dask workers (module docstring). One instance serves one run's stages."""

    def __init__(self, client, address: str, store_url: str, model_resources: tuple[tuple[str, float], ...] = ()):
        self.client, self.address, self.store_url = client, address, store_url
        self.resources = dict(model_resources)
        self._flight: dict[Any, tuple[ArtifactRef, str, list[WorkItem], Any]] = {}   # future -> its batch
        self._done = None                        # distributed.as_completed over the futures in flight
        self._store: ArtifactStore | None = None
        self.batches_by_worker: Counter[str] = Counter()
        self.worker_seconds = 0.0

    @classmethod
    def connect(cls, address: str, store_url: str, model_resources=()) -> "DaskBatches":
        """``tcp://HOST:PORT``: a running scheduler; ``local:N``: a LocalCluster of N one-thread processes,
        started once per process. Checks that the workers see the store (``DaskSetupError`` if not)."""
        resources = tuple((str(k), float(v)) for k, v in (dict(model_resources) or {}).items())
        try:
            client = cluster_client(address, resources)
        except (OSError, TimeoutError) as exc:
            raise DaskSetupError(f"cannot connect to the Dask scheduler at {address} ({describe_error(exc)})") \
                from None
        _check_cluster(client, address, store_url, resources)
        return cls(client, address, store_url, resources)

    # ---------------------------------------------------------------- BatchExecutor
    def submit(self, ref, run_id, compute, batch, absorb) -> None:
        if not _shippable(compute):   # a plain function may not pickle: compute it here
            absorb(compute_and_commit(self._driver_store(), ref, run_id, compute, batch), len(batch))
            return
        from distributed import as_completed

        while len(self._flight) >= self._limit():
            self._absorb_next(absorb)
        if self.client.status != "running":
            raise RuntimeError(f"lost the Dask scheduler at {self.address} (client {self.client.status})")
        shipped = type(compute)(compute.stage, compute.ctx, compute.params, compute.models, compute.refs)
        future = self.client.submit(run_batch, self.store_url, ref, run_id, shipped, batch, pure=False,
                                    key=f"anomflow-{ref.stage}-{uuid.uuid4().hex}",
                                    resources=self.resources if self.resources and compute.models else None)
        self._flight[future] = (ref, run_id, batch, absorb)
        if self._done is None:
            self._done = as_completed([future])
        else:
            self._done.add(future)

    def drain(self, absorb) -> None:
        while self._flight:
            self._absorb_next(absorb)

    def cancel(self) -> None:
        if self._flight:
            self.client.cancel(list(self._flight))
        self._flight.clear()
        if self._done is not None:
            self._done.clear()

    # ---------------------------------------------------------------- details
    def describe(self) -> dict[str, Any]:
        """Where the run's batches ran, for the report: kind, address, workers, resources, batches per worker."""
        kind, count = parse_address(self.address)
        workers = count if kind == "local" else len(self.client.nthreads())
        return {"kind": "dask", "address": self.address,
                "workers": workers, **({"resources": dict(self.resources)} if self.resources else {}),
                "batches_per_worker": dict(sorted(self.batches_by_worker.items())),
                "worker_seconds": round(self.worker_seconds, 3)}

    def _limit(self) -> int:
        return IN_FLIGHT_PER_WORKER * max(1, len(self.client.nthreads()))

    def _driver_store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore(self.store_url)
        return self._store

    def _absorb_next(self, absorb) -> None:
        """Wait for the next finished batch and pass its outcome to the absorb it was submitted with."""
        from distributed import KilledWorker

        future = next(self._done)
        ref, run_id, batch, batch_absorb = self._flight.pop(future)
        try:
            outcome = future.result()
        except KilledWorker as exc:
            outcome = self._died(ref, run_id, batch, exc)
        else:
            for name, n in outcome.model_calls.items():
                calls.count_call(name, n)
            for name, n in outcome.model_loads.items():
                calls.MODEL_LOADS[name] += n
            for name, seconds in outcome.load_seconds.items():
                calls.add_load_seconds(name, seconds)
            self.batches_by_worker[outcome.worker] += 1
            self.worker_seconds += outcome.seconds
        (batch_absorb or absorb)(outcome, len(batch))

    def _died(self, ref: ArtifactRef, run_id: str, batch: list[WorkItem], exc: BaseException) -> BatchOutcome:
        """Every worker that took the batch died: what it committed counts, the rest fails with the reason."""
        store = self._driver_store()
        committed = store.lookup(ref, [w.item for w in batch])
        lost = [w for w in batch if w.item not in committed]
        reason = (f"the Dask worker computing this batch of {len(batch)} died (out of memory, a crash in native "
                  f"code, or killed): {describe_error(exc)}")
        if lost:
            store.release(ref, [w.item for w in lost], run_id)
        log.warning("%s: %s", ref.stage, reason)
        return BatchOutcome(computed=len(batch) - len(lost),
                            failed=[(w.item, w.dependents or (w.image,), f"{w.what} failed: {reason}"
                                     if w.what else reason) for w in lost])
