"""Bookkeeping of one run: which images are still in, stage statistics, and the run record in the store."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from stores import ArtifactRef
from tasks.datasets import load_dataset
from tasks.datasets.records import ImageRecord
from tasks.engine.context import FailureTracker, ImageItem, RunContext
from tasks.engine.inputs import prepare_images
from tasks.engine.runner import StageResult, StageStats
from tasks.models import calls
from tasks.models.loading import model_identity


@dataclass(frozen=True)
class DatasetSpec:
    kind: str                      # mvtec | visa | folder
    root: str
    categories: tuple[str, ...] | None = None
    split: str = "test"


@dataclass
class RunState:
    run_id: str
    method: str
    config: dict[str, Any]
    dataset: DatasetSpec
    records: list[ImageRecord]
    tracker: FailureTracker
    models: list[dict[str, Any]]
    started: float = field(default_factory=time.perf_counter)
    stages: list[StageStats] = field(default_factory=list)
    artifacts: list[ArtifactRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # warnings a reader of the report must see
    load_seconds_before: dict[str, float] = field(default_factory=lambda: dict(calls.LOAD_SECONDS))

    def model_load_seconds(self) -> dict[str, float]:
        """Seconds spent building models during this run (inside the stage times; none on a warm run)."""
        return {k: round(v - self.load_seconds_before.get(k, 0.0), 3) for k, v in calls.LOAD_SECONDS.items()
                if v - self.load_seconds_before.get(k, 0.0) > 0}

    @property
    def alive(self) -> list[ImageItem]:
        return self.tracker.alive

    def absorb(self, ctx: RunContext, result: StageResult | None,
               within: list[ImageItem] | None = None) -> list[ImageItem]:
        """Take a stage's statistics and failures; returns the images still in the run (of ``within``)."""
        if result is None:
            return self.alive if within is None else within
        if within is not None:
            self.absorb(ctx, result)
            alive = {i.image_id for i in self.alive}
            return [i for i in within if i.image_id in alive]
        merged = next((s for s in self.stages if s.name == result.stats.name), None)
        if merged is None:
            self.stages.append(result.stats)
        else:
            merged.merge(result.stats)
        self.artifacts.extend((result.ref, *result.side_refs))
        self.record(ctx, "running")
        return self.tracker.drop(result.failures)

    def record(self, ctx: RunContext, status: str) -> None:
        ctx.store.write_run(self.run_id, {
            "run_id": self.run_id, "method": self.method, "status": status,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "artifacts": sorted({a.path for a in self.artifacts}),
        })


@task(cache_policy=NO_CACHE, persist_result=False)
def start_run(ctx: RunContext, method: str, config: dict[str, Any], dataset: DatasetSpec,
              model_names: list[str]) -> RunState:
    """Load the dataset records, hash the images, pin the model identities, and open the run record."""
    records = load_dataset(dataset.kind, dataset.root, list(dataset.categories) if dataset.categories else None,
                           dataset.split)
    items, failures = prepare_images(records, dataset.root)
    models = [model_identity(n, ctx.models_dir, ctx.random_weights).as_dict() for n in model_names]
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    state = RunState(run_id, method, config, dataset, records, FailureTracker(items, dict(failures)), models)
    state.record(ctx, "running")
    return state
