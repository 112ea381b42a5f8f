"""Run one stage: find the items its artifact lacks, compute them in batches, commit each atomically."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from stores import ArtifactRef, ArtifactStore, ItemData, artifact_key
from stores.packs import check_array
from stores.runs import RunSession, new_run_id, session
from tasks.datasets.records import ImageError
from tasks.engine.context import ImageItem
from tasks.engine.inputs import item_of

if TYPE_CHECKING:  # pragma: no cover
    from tasks.engine.stage import StageCall

log = logging.getLogger("anomflow.engine")
_POLL_SECONDS = 0.25   # first wait for items another run holds; doubles up to 2 s


@dataclass(frozen=True)
class StageDef:
    """Everything that determines a stage's output, hence its key.

    params: only the parameters this stage reads; models: identity dicts (name, weights_sha256, ...);
    upstream: refs of the artifacts it reads; side_inputs: per-image files it reads besides the image
    (``tasks.engine.inputs.SIDE_INPUTS``), whose hashes join its items' ids and those of everything downstream.
    """

    name: str
    version: int
    params: dict[str, Any]
    models: tuple[dict[str, Any], ...] = ()
    upstream: tuple[ArtifactRef, ...] = ()
    side_inputs: tuple[str, ...] = ()

    @property
    def side(self) -> tuple[str, ...]:
        """Side inputs of the whole lineage: its own and its upstream artifacts'."""
        return tuple(sorted({*self.side_inputs, *(s for u in self.upstream for s in u.side)}))

    @property
    def key(self) -> str:
        return artifact_key(self.name, self.version, self.params, list(self.models),
                            [u.key for u in self.upstream])

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "params": self.params, "models": list(self.models),
                "upstream": [f"{u.stage}/{u.key}" for u in self.upstream], "side": list(self.side)}


@dataclass(frozen=True)
class WorkItem:
    """item: id inside the artifact; image: the image id it belongs to.

    dependents: the image ids that fail when this item fails (default: ``image``); a set item names every
    image computed from it. what: how a failure reason names the item (``set memory_bank:bottle (20 members)``).
    """

    item: str
    image: str
    payload: Any = None
    dependents: tuple[str, ...] = ()
    what: str = ""

    def failure(self, exc: BaseException) -> tuple[tuple[str, ...], str]:
        """(images that fail, reason)."""
        reason = describe_error(exc)
        if not self.what:
            return self.dependents or (self.image,), reason
        member = f"{exc.path}: " if isinstance(exc, ImageError) else ""   # which member of the set
        return self.dependents or (self.image,), f"{self.what} failed: {member}{reason}"


@dataclass
class StageStats:
    name: str
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    detail: dict[str, int] = field(default_factory=dict)   # stage-specific counts, e.g. boxes_decoded

    def merge(self, other: "StageStats") -> None:
        self.computed += other.computed
        self.reused += other.reused
        self.failed += other.failed
        self.seconds += other.seconds
        for name, count in other.detail.items():
            self.detail[name] = self.detail.get(name, 0) + count


@dataclass
class StageResult:
    ref: ArtifactRef
    stats: StageStats
    failures: dict[str, str] = field(default_factory=dict)  # image id -> reason
    side_refs: tuple[ArtifactRef, ...] = ()   # auxiliary artifacts the stage wrote (a memo); runs keep them
    fallbacks: dict[str, list[str]] = field(default_factory=dict)   # name -> image ids (tasks.engine.fallbacks)


ComputeFn = Callable[[list[WorkItem]], Sequence[ItemData]]


@dataclass
class BatchOutcome:
    """What computing one claimed batch did: committed count, failures, stage counts, model calls, seconds."""

    computed: int = 0
    failed: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)   # (item, images, reason)
    detail: dict[str, int] = field(default_factory=dict)
    model_calls: dict[str, int] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)


def per_image(images: list[ImageItem], stage: StageDef) -> list[WorkItem]:
    """One work item per image; the item id carries the hashes of the stage's side inputs, if any."""
    return [WorkItem(item_of(i, stage.side), i.image_id, i) for i in images]


def image_item(ref: ArtifactRef, image: ImageItem) -> str:
    """The id under which ``ref`` holds ``image``'s item."""
    return item_of(image, ref.side)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ImageError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


_NO_BAR = _NoBar()


def _progress_bar(name: str, total: int):
    from tqdm.auto import tqdm   # here: a stage with nothing to compute draws no bar and imports no tqdm

    return tqdm(total=total, desc=name, unit="item", leave=False)


def run_stage(store: ArtifactStore, stage: StageDef, work: Sequence[WorkItem], compute: "ComputeFn | StageCall",
              batch_size: int = 8, progress: bool = True, run_id: str | None = None,
              executor: "BatchExecutor | None" = None) -> StageResult:
    """Compute the work items the artifact lacks, in batches of ``batch_size``; each batch commits as one pack.

    compute: a function of a batch, or a declared stage's bound call (``tasks.engine.stage``), which an
    executor can ship to other processes (Dask workers, ``tasks.engine.distributed``).
    The artifact is named in the run record before anything is written. Each batch is claimed first: items
    another live run is computing are left to it and picked up (reused) once committed, or computed here if
    that run dies or fails them. A batch that raises is retried item by item so that one bad item fails
    alone; its images and reason land in ``failures`` and the rest of the batch is committed.
    """
    start = time.perf_counter()
    own = None if run_id and session(run_id) else RunSession(store, run_id or new_run_id(), {"stage": stage.name})
    run = own or session(run_id)
    run.announce(f"{stage.name}/{stage.key}")     # named before it exists: gc never takes it from under us
    ref = replace(store.ensure_artifact(stage.name, stage.key, stage.record()), side=stage.side)
    runner = executor or LocalBatches(store)
    try:
        unique = list({w.item: w for w in work}.values())
        done = store.lookup(ref, [w.item for w in unique])
        todo = [w for w in unique if w.item not in done]
        stats = StageStats(stage.name, reused=len(unique) - len(todo))
        failures: dict[str, str] = {}
        bar = _progress_bar(stage.name, len(todo)) if progress and todo else _NO_BAR

        def absorb(outcome: BatchOutcome, size: int) -> None:
            stats.computed += outcome.computed
            stats.failed += len(outcome.failed)
            for name, count in outcome.detail.items():
                stats.detail[name] = stats.detail.get(name, 0) + count
            for item, images, reason in outcome.failed:
                for image in images:
                    failures.setdefault(image, reason)
                log.warning("%s: %s failed: %s", stage.name, item[:12], reason)
            bar.update(size)

        pending, held, wait = list(todo), [], _POLL_SECONDS
        while pending or held:
            if not pending:                       # only items other runs are computing: wait for them
                runner.drain(absorb)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
                pending, held = held, []
            batch, pending = pending[:batch_size], pending[batch_size:]
            claim = store.claim(ref, [w.item for w in batch], run.run_id)
            stats.reused += len(claim.done)
            if claim.done:
                stats.detail["from_other_runs"] = stats.detail.get("from_other_runs", 0) + len(claim.done)
                bar.update(len(claim.done))
            held += [w for w in batch if w.item in set(claim.held)]
            granted = set(claim.granted)
            batch = [w for w in batch if w.item in granted]
            if batch:
                runner.submit(ref, run.run_id, compute, batch, absorb)
        runner.drain(absorb)
        bar.close()
    except BaseException:
        runner.cancel()
        if own:
            own.stop("failed")
        raise
    if own:
        own.stop("complete")
    stats.seconds = time.perf_counter() - start
    return StageResult(ref, stats, failures)


class BatchExecutor:
    """Where claimed batches are computed and committed. ``submit`` may return before the batch is done;
    ``drain`` waits for every submitted batch and passes each outcome to ``absorb``."""

    def submit(self, ref: ArtifactRef, run_id: str, compute, batch: list[WorkItem], absorb) -> None:
        raise NotImplementedError

    def drain(self, absorb) -> None:
        return None

    def cancel(self) -> None:
        return None


class LocalBatches(BatchExecutor):
    """In this process, one batch at a time."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def submit(self, ref, run_id, compute, batch, absorb) -> None:
        absorb(compute_and_commit(self.store, ref, run_id, compute, batch), len(batch))


def compute_and_commit(store: ArtifactStore, ref: ArtifactRef, run_id: str, compute: "ComputeFn | StageCall",
                       batch: list[WorkItem]) -> BatchOutcome:
    """Compute one claimed batch; commit what succeeded as one pack, release the claims of what failed."""
    call = compute if hasattr(compute, "stage") else None
    fn = (lambda b: call.stage.compute(call, b)) if call is not None else compute
    detail_before = dict(call.detail) if call is not None else {}
    ok: list[tuple[str, ItemData]] = []
    outcome = BatchOutcome()
    for w, result in zip(batch, _compute_isolated(fn, batch)):
        if not isinstance(result, BaseException):
            result = _storable(result)
        if isinstance(result, BaseException):
            images, reason = w.failure(result)
            outcome.failed.append((w.item, images, reason))
        else:
            ok.append((w.item, result))
    if ok:
        store.write_batch(ref, ok, run_id)
        outcome.computed = len(ok)
    if outcome.failed:
        store.release(ref, [item for item, _, _ in outcome.failed], run_id)
    if call is not None:
        outcome.detail = {k: v - detail_before.get(k, 0) for k, v in call.detail.items()
                          if v - detail_before.get(k, 0)}
    return outcome


def _storable(data: ItemData) -> ItemData | BaseException:
    """The item as it will be stored, or the reason it cannot be (an object array, meta that is not JSON)."""
    try:
        for name, value in data.arrays.items():
            check_array(name, value)
        json.dumps(data.meta)
        return data
    except (TypeError, ValueError) as exc:
        return exc


def _compute_isolated(compute: ComputeFn, batch: list[WorkItem]) -> list[ItemData | BaseException]:
    try:
        out = list(compute(batch))
        if len(out) != len(batch):
            raise RuntimeError(f"stage returned {len(out)} results for {len(batch)} items")
        return out
    except Exception as exc:  # noqa: BLE001 - isolate the failing item below
        if len(batch) == 1:
            return [exc]
    results: list[ItemData | BaseException] = []
    for w in batch:
        try:
            results.append(compute([w])[0])
        except Exception as exc:  # noqa: BLE001 - reported per item, the batch goes on
            results.append(exc)
    return results
