"""Trained artifacts (tasks.engine.training) with the linear probe (tasks.probe.linear_probe) as the trainable:
per-epoch checkpoints, determinism, resume after SIGKILL, warm reruns, identity in downstream keys, learning."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stores import ArtifactRef, ArtifactStore
from tasks.datasets.synth import write_synthetic_mvtec
from tasks.engine.runner import StageDef
from tasks.engine.training import (FINAL_ITEM, RNG_ARRAY, epoch_item, load_trained, train, train_in_memory)
from tasks.probe.linear_probe import LinearProbe, ProbeConfig, cache_probe_features, probe_map, probe_stage
from tests.training_child import CONFIG, probe_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Tiny-WRN features of one synthetic category's 8 test images (16 x 16 grid, 448 channels), cached once."""
    base = tmp_path_factory.mktemp("probe")
    root = str(base / "data")
    write_synthetic_mvtec(root, categories=1, images=8, seed=0, size=64)
    features_url = str(base / "features")
    store = ArtifactStore(features_url)
    stage, trainable = probe_setup(store, root, seed=0, epochs=EPOCHS)
    return SimpleNamespace(root=root, features_url=features_url, store=store, stage=stage, trainable=trainable,
                           features_ref=stage.upstream[0])


def with_params(stage: StageDef, **changes) -> StageDef:
    return dataclasses.replace(stage, params={**stage.params, **changes})


def fresh_store(tmp_path, name: str = "train") -> ArtifactStore:
    return ArtifactStore(str(tmp_path / f"{name}-{uuid.uuid4().hex[:6]}"))


class Interrupted(Exception):
    """Stands in for a kill in the in-process resume tests."""


def interrupt_after(k: int):
    def hook(epoch, metrics):
        if epoch == k:
            raise Interrupted
    return hook


# ----------------------------------------------------------------------------------------------- layout
def test_one_checkpoint_per_epoch_then_final_weights(probe, tmp_path):
    store = fresh_store(tmp_path)
    seen = []
    result = train(store, probe.stage, probe.trainable, EPOCHS, on_epoch_committed=lambda e, m: seen.append(e))
    assert (result.epochs_run, result.resumed_from) == (EPOCHS, 0)
    assert seen == [1, 2, 3, 4]
    view = store.open(result.ref)
    assert view.items() == [epoch_item(e) for e in range(1, EPOCHS + 1)] + [FINAL_ITEM]
    assert epoch_item(1) == "epoch-0001"
    losses = []
    for epoch in range(1, EPOCHS + 1):
        meta = view.meta(epoch_item(epoch))
        assert meta["epoch"] == epoch and meta["seconds"] >= 0
        assert set(meta["metrics"]) == {"loss", "loss_after", "accuracy"}
        losses.append(meta["metrics"]["loss_after"])
        arrays = view.read(epoch_item(epoch)).arrays
        assert {"weight", "bias", "opt.0.exp_avg", "opt.0.exp_avg_sq", "opt.0.step", RNG_ARRAY} <= set(arrays)
        assert arrays[RNG_ARRAY].dtype == np.uint8
        assert float(arrays["opt.0.step"]) == epoch * 8 * 16 * 16 // CONFIG.batch_size   # Adam steps so far
    assert losses[-1] < losses[0]                          # it learns on the real features too
    final = view.read(FINAL_ITEM)
    assert sorted(final.arrays) == ["bias", "weight"] and final.arrays["weight"].shape == (448,)
    assert final.meta == {"epochs": EPOCHS, "metrics": view.meta(epoch_item(EPOCHS))["metrics"]}
    # the checkpoints are consecutive states: epoch 4's weights are the final ones, epoch 3's are not
    assert np.array_equal(view.read(epoch_item(EPOCHS)).arrays["weight"], final.arrays["weight"])
    assert not np.array_equal(view.read(epoch_item(EPOCHS - 1)).arrays["weight"], final.arrays["weight"])


def test_params_must_name_seed_and_epochs(probe, tmp_path):
    store = fresh_store(tmp_path)
    no_seed = dataclasses.replace(probe.stage, params={k: v for k, v in probe.stage.params.items() if k != "seed"})
    with pytest.raises(ValueError, match="seed"):
        train(store, no_seed, probe.trainable)
    with pytest.raises(ValueError, match="epochs"):
        train(store, probe.stage, probe.trainable, epochs=EPOCHS + 1)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_weights_other_seed_other_weights(probe, tmp_path):
    one, two = fresh_store(tmp_path), fresh_store(tmp_path)
    first, second = train(one, probe.stage, probe.trainable), train(two, probe.stage, probe.trainable)
    a, b = load_trained(one, first.ref), load_trained(two, second.ref)
    assert first.ref.key == second.ref.key
    assert all(np.array_equal(a[n], b[n]) for n in ("weight", "bias"))
    state, _ = train_in_memory(probe.trainable, seed=0, epochs=EPOCHS)       # no store, same numbers
    assert np.array_equal(a["weight"], probe.trainable.weight_arrays(state)["weight"])
    other = with_params(probe.stage, seed=1)
    c = load_trained(store := fresh_store(tmp_path), train(store, other, probe.trainable).ref)
    assert not np.array_equal(a["weight"], c["weight"])


# ------------------------------------------------------------------------------------------------ resume
def reference_weights(probe) -> dict[str, np.ndarray]:
    state, _ = train_in_memory(probe.trainable, seed=int(probe.stage.params["seed"]), epochs=EPOCHS)
    return probe.trainable.weight_arrays(state)


def test_resume_after_sigkill_is_bit_identical(probe, tmp_path):
    """A child process commits epoch 2, blocks, and is SIGKILLed; training again resumes at epoch 3."""
    k, train_url, marker = 2, str(tmp_path / "train"), str(tmp_path / "epoch-committed")
    run_id = f"child-{uuid.uuid4().hex[:8]}"
    args = [probe.features_url, train_url, probe.root, "0", str(EPOCHS), str(k), marker,
            str(torch.get_num_threads()), run_id]
    log = open(tmp_path / "child.log", "w+")
    child = subprocess.Popen([sys.executable, "-m", "tests.training_child", *args], cwd=REPO, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            if child.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"child ended ({child.returncode}) or stalled before epoch {k}:\n{log.read()}")
            time.sleep(0.05)
        store = ArtifactStore(train_url)
        ref = store.ref(probe.stage.name, probe.stage.key)
        everything = [epoch_item(e) for e in range(1, EPOCHS + 1)] + [FINAL_ITEM]
        assert sorted(store.lookup(ref, everything)) == [epoch_item(e) for e in range(1, k + 1)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        log.close()
    assert child.returncode == -signal.SIGKILL
    assert store.run_info(run_id).status == "running"        # killed: it never closed its run
    result = train(store, probe.stage, probe.trainable)
    assert (result.ref, result.epochs_run, result.resumed_from) == (ref, EPOCHS - k, k)
    weights, expected = load_trained(store, ref), reference_weights(probe)
    assert all(np.array_equal(weights[n], expected[n]) for n in expected)


@pytest.mark.parametrize("k", [1, 3])
def test_resume_in_process_is_bit_identical(probe, tmp_path, k):
    store = fresh_store(tmp_path)
    with pytest.raises(Interrupted):
        train(store, probe.stage, probe.trainable, on_epoch_committed=interrupt_after(k))
    assert store.open(store.ref(probe.stage.name, probe.stage.key)).items() == [epoch_item(e) for e in range(1, k + 1)]
    result = train(store, probe.stage, probe.trainable)
    assert (result.epochs_run, result.resumed_from) == (EPOCHS - k, k)
    weights, expected = load_trained(store, result.ref), reference_weights(probe)
    assert all(np.array_equal(weights[n], expected[n]) for n in expected)


class ForgetfulProbe(LinearProbe):
    """Checkpoints without the Adam moments: resuming restarts them from zero."""

    def state_arrays(self, state):
        return self.weight_arrays(state)


def test_resume_detects_a_checkpoint_that_misses_state(probe, tmp_path):
    """The resume check can fail: a trainable whose checkpoints drop optimizer state resumes to other weights."""
    forgetful = ForgetfulProbe(probe.trainable.x.numpy().reshape(8, 16, 16, 448).transpose(0, 3, 1, 2),
                               probe.trainable.y.numpy().reshape(8, 16, 16), CONFIG)
    store = fresh_store(tmp_path)
    with pytest.raises(Interrupted):
        train(store, probe.stage, forgetful, on_epoch_committed=interrupt_after(2))
    resumed = load_trained(store, train(store, probe.stage, forgetful).ref)
    assert not np.array_equal(resumed["weight"], reference_weights(probe)["weight"])


def test_warm_rerun_trains_nothing(probe, tmp_path):
    store = fresh_store(tmp_path)
    first = train(store, probe.stage, probe.trainable)
    packs = len(store.index.packs(first.ref.path))
    again = train(store, probe.stage, probe.trainable, on_epoch_committed=lambda e, m: pytest.fail("trained"))
    assert (again.ref, again.epochs_run, again.resumed_from) == (first.ref, 0, EPOCHS)
    assert len(store.index.packs(first.ref.path)) == packs == EPOCHS + 1


def test_concurrent_trainers_never_compute_an_epoch_twice(probe, tmp_path):
    """Two trainers (own run ids, own store handles) on one key take turns; each epoch is computed once."""
    url, epochs = str(tmp_path / "shared"), 6
    stage = with_params(probe.stage, epochs=epochs)
    barrier, results, errors = threading.Barrier(2), [], []
    ArtifactStore(url)   # created here: two handles creating one store at once can race on its zarr.json

    def trainer():
        try:
            barrier.wait()
            results.append(train(ArtifactStore(url), stage, probe.trainable,
                                 on_epoch_committed=lambda e, m: time.sleep(0.15)))   # lets the other claim next
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=trainer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 2
    assert sum(r.epochs_run for r in results) == epochs
    store = ArtifactStore(url)
    assert store.index.duplicates(results[0].ref.path) == []
    assert len(store.index.packs(results[0].ref.path)) == epochs + 1
    state, _ = train_in_memory(probe.trainable, seed=0, epochs=epochs)
    assert np.array_equal(load_trained(store, results[0].ref)["weight"], probe.trainable.weight_arrays(state)["weight"])


# ---------------------------------------------------------------------------------------------- identity
def test_key_changes_with_everything_that_decides_the_weights(probe):
    base = probe.stage
    other_upstream = ArtifactRef(probe.features_ref.stage, "0" * 64, "elsewhere")
    variants = [with_params(base, seed=1), with_params(base, epochs=EPOCHS + 1),
                with_params(base, lr=0.01), with_params(base, pos_weight=1.0), with_params(base, items="0" * 64),
                dataclasses.replace(base, upstream=(other_upstream,))]
    keys = {base.key} | {v.key for v in variants}
    assert len(keys) == len(variants) + 1
    assert probe_stage(probe.features_ref, ["a", "b"], 0, EPOCHS, CONFIG).key != \
        probe_stage(probe.features_ref, ["b", "a"], 0, EPOCHS, CONFIG).key        # the data's order counts
    assert probe_stage(probe.features_ref, ["a"], 0, EPOCHS, CONFIG).key == \
        probe_stage(probe.features_ref, ["a"], 0, EPOCHS, ProbeConfig(**dataclasses.asdict(CONFIG))).key


def test_downstream_stage_keys_on_trained_weights_and_loads_them(probe, tmp_path):
    store = fresh_store(tmp_path)
    trained = train(store, probe.stage, probe.trainable)
    retrained = train(store, with_params(probe.stage, seed=1), probe.trainable)

    def scoring(weights) -> StageDef:
        return StageDef("probe_map", 1, {}, models=(weights.identity(),), upstream=(probe.features_ref,))

    assert trained.identity() == {"name": "trained:linear_probe", "weights_sha256": f"trained:{trained.ref.key}",
                                  "trained": "linear_probe", "key": trained.ref.key}
    assert scoring(trained).key != scoring(retrained).key
    assert scoring(trained).key == scoring(train(store, probe.stage, probe.trainable)).key
    features = probe.trainable.x.numpy().reshape(8, 16, 16, 448).transpose(0, 3, 1, 2)
    state, _ = train_in_memory(probe.trainable, seed=0, epochs=EPOCHS)
    from_store = probe_map(load_trained(store, trained.ref), features)
    assert from_store.shape == (8, 16, 16) and from_store.dtype == np.float32
    assert np.array_equal(from_store, probe_map(probe.trainable.weight_arrays(state), features))
    assert not np.array_equal(from_store, probe_map(load_trained(store, retrained.ref), features))
    unfinished = store.ensure_artifact("linear_probe", "f" * 64, {})
    with pytest.raises(KeyError, match="no final weights"):
        load_trained(store, unfinished)


def test_features_are_cached_once(probe, counters):
    """The probe's upstream is a store artifact: asking again computes nothing and gives the same ref."""
    ref, images = cache_probe_features(probe.store, probe.root, size=64)
    assert ref == probe.features_ref and len(images) == 8
    assert counters.total_calls() == 0
    cache_probe_features(ArtifactStore(probe.features_url + "-again"), probe.root, size=64)
    assert counters.MODEL_CALLS["tiny-wrn50"] == 1                # a fresh store computes them (one batch of 8)


# ---------------------------------------------------------------------------------------------- learning
def test_probe_learns_a_linear_target(tmp_path):
    """Cells whose label is the sign of a fixed projection of their features: > 0.95 accuracy, loss falls."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((16, 8, 8, 8)).astype(np.float32)          # N x C x h x w
    direction = rng.standard_normal(8).astype(np.float32)
    targets = (np.einsum("nchw,c->nhw", features, direction) > 0.3).astype(np.float32)
    config = ProbeConfig(lr=0.05, pos_weight=1.0, batch_size=64)
    stage = StageDef("linear_probe", 1, {"seed": 0, "epochs": 12, **dataclasses.asdict(config), "data": "linear"})
    store = fresh_store(tmp_path)
    result = train(store, stage, LinearProbe(features, targets, config))
    view = store.open(result.ref)
    losses = [view.meta(epoch_item(e))["metrics"]["loss"] for e in range(1, 13)]
    assert losses[-1] < 0.5 * losses[0]
    predicted = probe_map(load_trained(store, result.ref), features) > 0.5
    assert (predicted == (targets > 0.5)).mean() > 0.95
    assert view.meta(FINAL_ITEM)["metrics"]["accuracy"] > 0.95
