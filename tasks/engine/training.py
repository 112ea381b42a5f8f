"""Trained artifacts: a training stage whose items are per-epoch checkpoints and, once done, the final weights.

Items of a training artifact ``<stage>/<key>`` (``StageDef.key`` over seed, epochs, hyperparameters and the
upstream data artifacts, so it names the weights exactly)::

    epoch-0001 ... epoch-NNNN   the whole training state after that epoch: the trainable's arrays (weights,
                                optimizer state, ...) plus ``rng.torch``, the runner's torch.Generator state (uint8)
                                meta: epoch, metrics (the trainable's, e.g. loss), seconds
    final                       the weights only (``Trainable.weight_arrays``); meta: epochs, metrics

Each checkpoint commits atomically (one pack) as its epoch ends. ``train`` resumes from the last committed
epoch: a kill loses at most the epoch in progress. Resume is bit-identical to an uninterrupted run because
the checkpoint holds everything the next epoch reads: the trainable's state (parameters and optimizer
moments, float arrays stored exactly) and the runner's generator. The runner also seeds torch's global RNG
from that generator around every call into the trainable, so code that draws from it (dropout, nn.Linear
init) is covered too. Checkpoints are never reloaded on the uninterrupted path: a state that does not
round-trip (say, optimizer moments left out) makes the resumed run differ, which the tests detect.

Downstream stages put ``TrainedWeights.identity()`` among their ``models`` and read ``load_trained``.

Concurrent trainers of one key (other processes, or threads with other run ids) share the work: each epoch
and the final item are claimed before they are computed, so none is computed twice while its claimer lives.
A trainer that finds the next epoch claimed by a live run waits for its commit and goes on from there; the
two may take turns, each continuing from the latest checkpoint. A killed trainer's claim lapses with its
heartbeat (the store's liveness window), then the next epoch is computed by whoever claims it. Torch's global
RNG is process-wide: trainers in threads of one process stay deterministic only if their trainables draw from
the generator alone (the probe does).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from stores import ArtifactRef, ArtifactStore, ItemData
from stores.runs import RunSession, new_run_id, session
from tasks.engine.runner import StageDef

EPOCH_PREFIX = "epoch-"
FINAL_ITEM = "final"
RNG_ARRAY = "rng.torch"
_POLL_SECONDS = 0.25   # first wait for an epoch another live run is computing; doubles up to 2 s

EpochHook = Callable[[int, dict[str, Any]], None]


class Trainable(Protocol):
    """A method's training, as the runner drives it. Draw randomness only from ``generator`` (or torch's global
    RNG, which the runner seeds from it); keep everything else the next epoch depends on in the state."""

    def init_state(self, generator: torch.Generator) -> Any:
        """The state before epoch 1 (initial parameters, a fresh optimizer)."""

    def train_epoch(self, state: Any, epoch: int, generator: torch.Generator) -> tuple[Any, dict[str, Any]]:
        """One epoch (1-based); returns the new state and JSON-able metrics."""

    def state_arrays(self, state: Any) -> dict[str, np.ndarray]:
        """The whole state as named numeric arrays (copies; names without '/')."""

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> Any:
        """Inverse of ``state_arrays``."""

    def weight_arrays(self, state: Any) -> dict[str, np.ndarray]:
        """The weights a downstream stage needs (what ``final`` holds)."""


@dataclass(frozen=True)
class TrainedWeights:
    """ref: the training artifact; epochs_run: epochs this call computed; resumed_from: the last epoch
    committed when it started (0 for a fresh start, ``epochs`` for a warm rerun)."""

    ref: ArtifactRef
    epochs_run: int
    resumed_from: int

    def identity(self) -> dict[str, str]:
        """The weights as a ``models`` entry of a downstream StageDef: ``stores.keys.artifact_key`` reads
        ``name`` and ``weights_sha256``; ``trained`` and ``key`` say where the weights are."""
        return {"name": f"trained:{self.ref.stage}", "weights_sha256": f"trained:{self.ref.key}",
                "trained": self.ref.stage, "key": self.ref.key}


def epoch_item(epoch: int) -> str:
    return f"{EPOCH_PREFIX}{epoch:04d}"


def load_trained(store: ArtifactStore, ref: ArtifactRef) -> dict[str, np.ndarray]:
    """The final weights of a training artifact (as ``Trainable.weight_arrays`` gave them)."""
    view = store.open(ref)
    if not view.has(FINAL_ITEM):
        raise KeyError(f"{ref.path}: no final weights (training unfinished: run train() again to resume it)")
    return view.read(FINAL_ITEM).arrays


# ------------------------------------------------------------------------------------------------ epochs
def _seeded(generator: torch.Generator, call: Callable[[], Any]) -> Any:
    """Run ``call`` with torch's global RNG seeded from ``generator`` (and restored afterwards)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return call()


def _fresh(trainable: Trainable, seed: int) -> tuple[Any, torch.Generator]:
    generator = torch.Generator().manual_seed(int(seed))
    return _seeded(generator, lambda: trainable.init_state(generator)), generator


def _epoch(trainable: Trainable, state: Any, epoch: int, generator: torch.Generator) -> tuple[Any, dict]:
    return _seeded(generator, lambda: trainable.train_epoch(state, epoch, generator))


def train_in_memory(trainable: Trainable, seed: int, epochs: int) -> tuple[Any, list[dict[str, Any]]]:
    """The same training with no store (what ``train`` computes, epoch by epoch): (state, metrics per epoch)."""
    state, generator = _fresh(trainable, seed)
    history = []
    for epoch in range(1, epochs + 1):
        state, metrics = _epoch(trainable, state, epoch, generator)
        history.append(metrics)
    return state, history


# ------------------------------------------------------------------------------------------------ runner
def _settings(stage: StageDef, epochs: int | None) -> tuple[int, int]:
    """(seed, epochs): both must be stage params, so that they are in the key."""
    if "seed" not in stage.params:
        raise ValueError(f"training stage {stage.name}: params need a 'seed' (it decides the weights)")
    declared = stage.params.get("epochs")
    if declared is None or (epochs is not None and int(epochs) != int(declared)):
        raise ValueError(f"training stage {stage.name}: params need 'epochs' equal to the epochs trained "
                         f"(params {declared}, asked {epochs})")
    if int(declared) < 1:
        raise ValueError(f"training stage {stage.name}: epochs must be >= 1, got {declared}")
    return int(stage.params["seed"]), int(declared)


def train(store: ArtifactStore, stage: StageDef, trainable: Trainable, epochs: int | None = None,
          run_id: str | None = None, on_epoch_committed: EpochHook | None = None) -> TrainedWeights:
    """Train ``trainable`` into the artifact of ``stage`` (params must hold ``seed`` and ``epochs``).

    Resumes from the last committed checkpoint; returns at once if ``final`` is committed. ``on_epoch_committed
    (epoch, metrics)`` runs after each epoch this call commits, before the next is claimed.
    """
    seed, epochs = _settings(stage, epochs)
    own = None if run_id and session(run_id) else RunSession(store, run_id or new_run_id(), {"stage": stage.name})
    run = own or session(run_id)
    run.announce(f"{stage.name}/{stage.key}")     # named before it exists: gc never takes it from under us
    ref = store.ensure_artifact(stage.name, stage.key, stage.record())
    try:
        result = _Training(store, ref, trainable, seed, epochs, run.run_id).run(on_epoch_committed)
    except BaseException:
        if own:
            own.stop("failed")
        raise
    if own:
        own.stop("complete")
    return result


class _Training:
    """One call's walk through the epochs; ``state`` is in memory after epoch ``at`` (-1: nothing loaded)."""

    def __init__(self, store: ArtifactStore, ref: ArtifactRef, trainable: Trainable, seed: int, epochs: int,
                 run_id: str):
        self.store, self.ref, self.trainable = store, ref, trainable
        self.seed, self.epochs, self.run_id = seed, epochs, run_id
        self.state: Any = None
        self.generator: torch.Generator | None = None
        self.at = -1

    def last_committed(self) -> int:
        done = self.store.lookup(self.ref, [epoch_item(e) for e in range(1, self.epochs + 1)])
        return max((int(item[len(EPOCH_PREFIX):]) for item in done), default=0)

    def has_final(self) -> bool:
        return bool(self.store.lookup(self.ref, [FINAL_ITEM]))

    def run(self, on_epoch_committed: EpochHook | None) -> TrainedWeights:
        if self.has_final():
            return TrainedWeights(self.ref, 0, self.epochs)
        started_at, computed, wait = self.last_committed(), 0, _POLL_SECONDS
        while (last := self.last_committed()) < self.epochs:
            granted, held = self.claim(epoch_item(last + 1))
            if not granted:
                wait = self.pause(wait) if held else wait
                continue
            wait = _POLL_SECONDS
            metrics = self.commit_epoch(last)
            computed += 1
            if on_epoch_committed is not None:
                on_epoch_committed(last + 1, metrics)
        while not self.has_final():
            granted, held = self.claim(FINAL_ITEM)
            if granted:
                self.commit_final()
            elif held:
                wait = self.pause(wait)
        return TrainedWeights(self.ref, computed, started_at)

    def claim(self, item: str) -> tuple[bool, bool]:
        """(granted: this run computes ``item`` now, held: a live run is computing it); neither: committed."""
        result = self.store.claim(self.ref, [item], self.run_id)
        return bool(result.granted), bool(result.held)

    @staticmethod
    def pause(wait: float) -> float:
        time.sleep(wait)
        return min(wait * 2, 2.0)

    def load(self, epoch: int) -> None:
        """State and generator after ``epoch`` (0: fresh from the seed), unless already in memory."""
        if self.at == epoch:
            return
        if epoch == 0:
            self.state, self.generator = _fresh(self.trainable, self.seed)
        else:
            arrays = dict(self.store.open(self.ref).read(epoch_item(epoch)).arrays)
            self.generator = torch.Generator()
            self.generator.set_state(torch.from_numpy(np.array(arrays.pop(RNG_ARRAY), dtype=np.uint8)))
            self.state = self.trainable.state_from_arrays(arrays)
        self.at = epoch

    def commit_epoch(self, last: int) -> dict[str, Any]:
        """Compute epoch ``last + 1`` from checkpoint ``last`` (claimed) and commit its checkpoint."""
        item = epoch_item(last + 1)
        try:
            self.load(last)
            start = time.perf_counter()
            self.state, metrics = _epoch(self.trainable, self.state, last + 1, self.generator)
            self.at = last + 1
            arrays = {**self.trainable.state_arrays(self.state), RNG_ARRAY: self.generator.get_state().numpy().copy()}
            meta = {"epoch": last + 1, "metrics": metrics, "seconds": round(time.perf_counter() - start, 4)}
            self.store.write_batch(self.ref, [(item, ItemData(arrays, meta))], self.run_id)
        except BaseException:
            self.at = -1                       # the state may be half-updated: reload before going on
            self.store.release(self.ref, [item], self.run_id)
            raise
        return metrics

    def commit_final(self) -> None:
        self.load(self.epochs)
        metrics = self.store.open(self.ref).meta(epoch_item(self.epochs))["metrics"]
        data = ItemData(self.trainable.weight_arrays(self.state), {"epochs": self.epochs, "metrics": metrics})
        self.store.write_batch(self.ref, [(FINAL_ITEM, data)], self.run_id)


# ------------------------------------------------------------------------------------------------ helpers
def tensor_array(tensor: torch.Tensor) -> np.ndarray:
    """A detached CPU copy of ``tensor`` as a numpy array (never a view of the live tensor)."""
    return tensor.detach().cpu().numpy().copy()


def optimizer_arrays(optimizer: torch.optim.Optimizer, prefix: str = "opt.") -> dict[str, np.ndarray]:
    """A torch optimizer's per-parameter state as arrays ``<prefix><param index>.<slot>`` (e.g. ``opt.0.exp_avg``,
    ``opt.0.step``). Hyperparameters (param_groups) are not stored: they come from the trainable's config."""
    out = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            out[f"{prefix}{index}.{slot}"] = tensor_array(torch.as_tensor(value))
    return out


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: dict[str, np.ndarray],
                          prefix: str = "opt.") -> None:
    """Restore the state ``optimizer_arrays`` wrote into a freshly built optimizer (same params, same config)."""
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, value in arrays.items():
        if name.startswith(prefix):
            index, slot = name[len(prefix):].split(".", 1)
            state[int(index)][slot] = torch.from_numpy(np.array(value))
    optimizer.load_state_dict({"state": dict(state), "param_groups": optimizer.state_dict()["param_groups"]})
