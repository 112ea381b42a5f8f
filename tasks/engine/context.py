"""What every stage task needs besides its own parameters: where things are and how to run."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property

from stores import ArtifactStore
from stores.runs import new_run_id
from tasks.datasets.records import ImageRecord
from tasks.report.post_run import PostRunOptions


@dataclass(frozen=True)
class ImageItem:
    """An image of the run: image_id is the sha256 of its file bytes (its cache address)."""

    image_id: str
    record: ImageRecord
    side: tuple[tuple[str, str], ...] = ()   # (side input, sha256 of its file or "absent"), e.g. ("mask", ...)

    def side_hash(self, name: str) -> str | None:
        return dict(self.side).get(name)


@dataclass(frozen=True)
class RunContext:
    store_url: str
    models_dir: str
    dataset_root: str | None = None
    random_weights: bool = False
    device: str = "cpu"
    batch_size: int = 4
    progress: bool = True
    run_id: str = field(default_factory=new_run_id)   # names the run record, its claims and announcements
    dask_address: str | None = None   # tcp://HOST:PORT of a Dask scheduler, or "local:N" (a LocalCluster of N)
    model_resources: tuple[tuple[str, float], ...] = ()   # Dask resources a batch that runs models needs
    post: PostRunOptions = field(default_factory=PostRunOptions)   # decisions, validation, alerts after the run

    def __getstate__(self) -> dict:
        """Pickled without the opened store (Dask workers open their own)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "executor")}

    def started(self) -> "RunContext":
        """This context with a run id. A scheduled deployment stores its context with an empty one, so that
        each of its runs (which may overlap) gets its own run record and claims."""
        return self if self.run_id else replace(self, run_id=new_run_id())

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_url)

    @cached_property
    def executor(self):
        """Where stage batches run: None (here), or the Dask cluster of ``dask_address``."""
        if not self.dask_address:
            return None
        from tasks.engine.distributed import DaskBatches
        return DaskBatches.connect(self.dask_address, self.store_url, self.model_resources)


@dataclass
class FailureTracker:
    """Images still in the run, and why the others dropped out (path -> reason, first failure wins)."""

    alive: list[ImageItem]
    failures: dict[str, str] = field(default_factory=dict)

    def drop(self, failed_ids: dict[str, str]) -> list[ImageItem]:
        if failed_ids:
            for item in self.alive:
                if item.image_id in failed_ids:
                    self.failures.setdefault(item.record.path, failed_ids[item.image_id])
            self.alive = [i for i in self.alive if i.image_id not in failed_ids]
        return self.alive


def inside_root(path: str, root: str | None) -> bool:
    if root is None:
        return True
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)
