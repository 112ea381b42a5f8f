"""Bookkeeping of one run: which images are still in, stage statistics, and the run record in the store."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from stores import ArtifactRef
from stores.runs import RunSession, session
from tasks.datasets import load_dataset
from tasks.datasets.records import ImageRecord
from tasks.engine.context import FailureTracker, ImageItem, RunContext
from tasks.engine.fallbacks import fallback_note
from tasks.engine.inputs import HashCache, prepare_images
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
    files_hashed: int = 0                             # input files read to hash them (unchanged files are not)
    timings: dict[str, float] = field(default_factory=dict)   # seconds: inputs, evaluation, report
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
        by_id = {i.image_id: i.record.relpath for i in self.alive}
        for name, images in result.fallbacks.items():
            result.stats.detail[name] = result.stats.detail.get(name, 0) + len(images)
            self.notes.append(fallback_note(result.stats.name, name, [by_id.get(i, i) for i in images]))
        merged = next((s for s in self.stages if s.name == result.stats.name), None)
        if merged is None:
            self.stages.append(result.stats)
        else:
            merged.merge(result.stats)
        self.artifacts.extend((result.ref, *result.side_refs))
        return self.tracker.drop(result.failures)

    def record(self, ctx: RunContext, status: str, **fields: Any) -> None:
        """Update the run record in place (status, and e.g. the error that ended it)."""
        run = session(self.run_id)
        if run is None:
            return
        if status == "running":
            run.update(status, **fields)
        else:
            run.stop(status, **fields)


@task(cache_policy=NO_CACHE, persist_result=False)
def start_run(ctx: RunContext, method: str, config: dict[str, Any], dataset: DatasetSpec,
              model_names: list[str], side_inputs: tuple[str, ...] = ()) -> RunState:
    """Open the run record, load the dataset records, hash the images (and the side inputs the run's stages
    read, e.g. ground-truth masks for oracle stages), and pin the model identities."""
    started = time.perf_counter()
    RunSession(ctx.store, ctx.run_id, {"method": method, "dataset": dataset.root, "models": model_names})
    records = load_dataset(dataset.kind, dataset.root, list(dataset.categories) if dataset.categories else None,
                           dataset.split)
    hashes = HashCache(ctx.store.index, dataset.root)
    items, failures = prepare_images(records, dataset.root, hashes, side_inputs)
    models = [model_identity(n, ctx.models_dir, ctx.random_weights).as_dict() for n in model_names]
    return RunState(ctx.run_id, method, config, dataset, records, FailureTracker(items, dict(failures)), models,
                    started=started, files_hashed=hashes.hashed,
                    timings={"inputs": round(time.perf_counter() - started, 3)})
