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
    """The inputs of a run, by role: the split to score, support splits of the same dataset (normal images a
    method builds a memory bank or statistics from), and another dataset to train on."""

    kind: str                      # mvtec | visa | folder
    root: str
    categories: tuple[str, ...] | None = None
    split: str = "test"
    support_splits: tuple[str, ...] = ()      # e.g. ("train",) or ("train", "validation"): their good images
    training: "DatasetSpec | None" = None     # another dataset (all its labelled images of ``split``)


ROLES = ("score", "support", "training")


@dataclass
class RoleInputs:
    """The hashed images of one input role and why the others dropped out (path -> reason)."""

    root: str
    records: int
    tracker: FailureTracker

    @property
    def items(self) -> list[ImageItem]:
        return self.tracker.alive

    def summary(self) -> dict[str, Any]:
        return {"root": self.root, "images": self.records, "usable": len(self.items),
                "failures": dict(self.tracker.failures)}


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
    roles: dict[str, RoleInputs] = field(default_factory=dict)   # support / training inputs, when the method has any

    def model_load_seconds(self) -> dict[str, float]:
        """Seconds spent building models during this run (inside the stage times; none on a warm run)."""
        return {k: round(v - self.load_seconds_before.get(k, 0.0), 3) for k, v in calls.LOAD_SECONDS.items()
                if v - self.load_seconds_before.get(k, 0.0) > 0}

    @property
    def alive(self) -> list[ImageItem]:
        return self.tracker.alive

    def absorb(self, ctx: RunContext, result: StageResult | None,
               within: list[ImageItem] | None = None, role: str = "score") -> list[ImageItem]:
        """Take a stage's statistics and failures; returns the images of ``role`` still in the run (of ``within``).

        A stage over support or training images (``role``) drops its failed images from that role only."""
        if result is None:
            return (self.alive if role == "score" else self.roles[role].items) if within is None else within
        if role != "score":
            failed = self.roles[role].tracker.drop(result.failures)
            self._take(result)
            alive = {i.image_id for i in failed}
            return [i for i in within if i.image_id in alive] if within is not None else failed
        if within is not None:
            self.absorb(ctx, result)
            alive = {i.image_id for i in self.alive}
            return [i for i in within if i.image_id in alive]
        self._take(result)
        return self.tracker.drop(result.failures)

    def _take(self, result: StageResult) -> None:
        """A stage's statistics, fallback notes and artifacts."""
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

    def record(self, ctx: RunContext, status: str, **fields: Any) -> None:
        """Update the run record in place (status, and e.g. the error that ended it)."""
        run = session(self.run_id)
        if run is None:
            return
        if status == "running":
            run.update(status, **fields)
        else:
            run.stop(status, **fields)


def _role(kind: str, root: str, categories, splits: tuple[str, ...], index, side_inputs: tuple[str, ...],
          good_only: bool) -> tuple[RoleInputs, int, list[ImageRecord]]:
    """Load, hash and check the images of some splits of one dataset; (inputs, files read to hash them, records)."""
    records = [r for split in splits for r in load_dataset(kind, root, list(categories) if categories else None, split)
               if not good_only or r.label in (0, None)]
    hashes = HashCache(index, root)
    items, failures = prepare_images(records, root, hashes, side_inputs)
    return RoleInputs(root, len(records), FailureTracker(items, dict(failures))), hashes.hashed, records


@task(cache_policy=NO_CACHE, persist_result=False)
def start_run(ctx: RunContext, method: str, config: dict[str, Any], dataset: DatasetSpec,
              model_names: list[str], side_inputs: tuple[str, ...] = ()) -> RunState:
    """Open the run record, load the dataset records of every input role, hash the images (and the side inputs
    the run's stages read: ground-truth masks, which evaluation always reads; object labels for oracle stages),
    and pin the model identities. Every role is hashed and checked like the images to score."""
    started = time.perf_counter()
    RunSession(ctx.store, ctx.run_id, {"method": method, "dataset": dataset.root, "models": model_names})
    side = tuple(sorted({*side_inputs, "mask"}))
    score, hashed, records = _role(dataset.kind, dataset.root, dataset.categories, (dataset.split,), ctx.store.index, side,
                          good_only=False)
    roles: dict[str, RoleInputs] = {}
    if dataset.support_splits:
        roles["support"], n, _ = _role(dataset.kind, dataset.root, dataset.categories, dataset.support_splits,
                                    ctx.store.index, side, good_only=True)
        hashed += n
    if dataset.training is not None:
        t = dataset.training
        roles["training"], n, _ = _role(t.kind, t.root, t.categories, (t.split,), ctx.store.index, side, good_only=False)
        hashed += n
    models = [model_identity(n, ctx.models_dir, ctx.random_weights).as_dict() for n in model_names]
    return RunState(ctx.run_id, method, config, dataset, records, score.tracker, models,
                    started=started, files_hashed=hashed, roles=roles,
                    timings={"inputs": round(time.perf_counter() - started, 3)})
