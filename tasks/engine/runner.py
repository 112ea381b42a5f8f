"""Run one stage: find the items its artifact lacks, compute them in batches, commit each atomically."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from stores import ArtifactRef, ArtifactStore, ItemData, artifact_key
from tasks.datasets.records import ImageError

log = logging.getLogger("anomflow.engine")


@dataclass(frozen=True)
class StageDef:
    """Everything that determines a stage's output, hence its key.

    params: only the parameters this stage reads; models: identity dicts (name, weights_sha256, ...);
    upstream: refs of the artifacts it reads.
    """

    name: str
    version: int
    params: dict[str, Any]
    models: tuple[dict[str, Any], ...] = ()
    upstream: tuple[ArtifactRef, ...] = ()

    @property
    def key(self) -> str:
        return artifact_key(self.name, self.version, self.params, list(self.models),
                            [u.key for u in self.upstream])

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "params": self.params, "models": list(self.models),
                "upstream": [f"{u.stage}/{u.key}" for u in self.upstream]}


@dataclass(frozen=True)
class WorkItem:
    """item: id inside the artifact; image: the image id it belongs to (failures are per image)."""

    item: str
    image: str
    payload: Any = None


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


ComputeFn = Callable[[list[WorkItem]], Sequence[ItemData]]


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ImageError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


def run_stage(store: ArtifactStore, stage: StageDef, work: Sequence[WorkItem], compute: ComputeFn,
              batch_size: int = 8, progress: bool = True) -> StageResult:
    """Compute the work items the artifact lacks, in batches of ``batch_size``.

    A batch that raises is retried item by item so that one bad item fails alone; its image id and
    reason land in ``failures`` and the rest of the batch is committed.
    """
    start = time.perf_counter()
    ref = store.ensure_artifact(stage.name, stage.key, stage.record())
    done = store.committed_items(ref)
    unique = list({w.item: w for w in work}.values())
    todo = [w for w in unique if w.item not in done]
    stats = StageStats(stage.name, reused=len(unique) - len(todo))
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=stage.name, unit="item", disable=not progress or not todo, leave=False)
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        for w, outcome in zip(batch, _compute_isolated(compute, batch)):
            if isinstance(outcome, BaseException):
                failures.setdefault(w.image, describe_error(outcome))
                stats.failed += 1
                log.warning("%s: %s failed: %s", stage.name, w.item[:12], failures[w.image])
            else:
                store.write_item(ref, w.item, outcome)
                stats.computed += 1
        bar.update(len(batch))
    bar.close()
    stats.seconds = time.perf_counter() - start
    return StageResult(ref, stats, failures)


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
