"""Child process of tests/test_training.py: trains the probe and blocks after committing epoch K until killed.

    python -m tests.training_child FEATURES_STORE TRAIN_STORE DATA SEED EPOCHS K MARKER THREADS RUN_ID

Writes MARKER once epoch K is committed, then sleeps; the test SIGKILLs it there. ``probe_setup`` is shared
with the test, so both build the same stage and trainable from the same cached features.
"""
from __future__ import annotations

import os
import sys
import time

import torch

from stores import ArtifactStore
from tasks.engine.runner import StageDef
from tasks.engine.training import train
from tasks.probe.linear_probe import LinearProbe, ProbeConfig, cache_probe_features, load_probe_data, probe_stage

CONFIG = ProbeConfig(lr=0.05, pos_weight=4.0, batch_size=128)
SIZE = 64   # input side: a 16 x 16 feature grid


def probe_setup(features_store: ArtifactStore, data_root: str, seed: int, epochs: int,
                config: ProbeConfig = CONFIG) -> tuple[StageDef, LinearProbe]:
    """The probe's training stage and trainable on the cached features of every test image of ``data_root``."""
    ref, images = cache_probe_features(features_store, data_root, size=SIZE)
    features, targets, ids = load_probe_data(features_store, ref, images)
    return probe_stage(ref, ids, seed, epochs, config), LinearProbe(features, targets, config)


def main(argv: list[str]) -> int:
    features_url, train_url, data_root, seed, epochs, kill_after, marker, threads, run_id = argv
    torch.set_num_threads(int(threads))        # the parent's: same kernels, same float results
    stage, probe = probe_setup(ArtifactStore(features_url), data_root, int(seed), int(epochs))

    def block(epoch: int, metrics: dict) -> None:
        if epoch == int(kill_after):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(300)                    # the test kills us here
            os._exit(3)                        # not reached unless the test failed to kill

    train(ArtifactStore(train_url), stage, probe, run_id=run_id, on_epoch_committed=block)
    return 2                                   # finishing means the kill never came


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
