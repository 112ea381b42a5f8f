"""WideResNet-50-2 adapter with the tiny seeded model: shapes, unit norm, determinism, batching, counting, memoisation;
the official (local-file) loading path exercised with a tiny checkpoint posing as an official file."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from tasks.models import calls, registry
from tasks.models.loading import RANDOM_PREFIX, clear_model_cache, load_wrn50, model_identity
from tasks.models.weights import WeightsMissingError
from tasks.models.wrn50 import build_wrn50_model, layer1_grid


pytestmark = pytest.mark.usefixtures("fresh_models")


def _images(seed: int = 0, sizes=((50, 70), (90, 60), (64, 64))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("size", [64, 96])
def test_tiny_shapes_and_unit_norm(tmp_path, size):
    net = load_wrn50("tiny-wrn50", tmp_path)
    feats = net.features(_images(), size)
    assert feats.shape == (3, 448, size // 4, size // 4) and feats.dtype == np.float32
    assert net.channels == 448 and layer1_grid(size) == size // 4
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert net.features([], size).shape == (0, 448, size // 4, size // 4)


def test_default_size_and_bad_input(tmp_path):
    net = load_wrn50("tiny-wrn50", tmp_path)
    assert net.features(_images(sizes=((20, 30),))).shape == (1, 448, 64, 64)  # spec.preprocess.size = 256
    with pytest.raises(ValueError):
        net.features([np.zeros((10, 10), np.uint8)], 32)
    with pytest.raises(ValueError):
        net.features([np.zeros((10, 10, 3), np.float32)], 32)


def test_one_counted_call_per_features_call(tmp_path):
    net = load_wrn50("tiny-wrn50", tmp_path)
    net.features(_images(), 32)
    assert calls.MODEL_CALLS["tiny-wrn50"] == 1
    net.features(_images()[:1], 32)
    net.features([], 32)
    assert calls.MODEL_CALLS["tiny-wrn50"] == 2


def test_batch_equals_one_by_one(tmp_path):
    net = load_wrn50("tiny-wrn50", tmp_path)
    imgs = _images()
    batch = net.features(imgs, 64)
    single = np.concatenate([net.features([im], 64) for im in imgs])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-5)


def test_deterministic_across_fresh_loads(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_wrn50("tiny-wrn50", tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeding is forked, the global RNG is untouched
    a = first.features(_images(), 64)
    clear_model_cache()
    second = load_wrn50("tiny-wrn50", tmp_path)
    assert second is not first
    assert np.array_equal(a, second.features(_images(), 64))
    assert calls.MODEL_LOADS["tiny-wrn50"] == 2


def test_memoised_and_identity(tmp_path):
    net = load_wrn50("tiny-wrn50", tmp_path)
    assert net is load_wrn50("tiny-wrn50", tmp_path / "elsewhere")  # random weights ignore the models dir
    assert calls.MODEL_LOADS["tiny-wrn50"] == 1 and not net.model.training
    assert net.identity == model_identity("tiny-wrn50", tmp_path)
    assert net.identity.weights_sha256.startswith(RANDOM_PREFIX) and net.identity.tiny
    full = model_identity("wrn50-2", tmp_path, random_weights=True)
    assert full.weights_sha256.startswith(RANDOM_PREFIX) and full.weights_sha256 != net.identity.weights_sha256


def test_family_mismatch_and_missing_official_weights(tmp_path):
    with pytest.raises(ValueError):
        load_wrn50("tiny-sam", tmp_path)
    with pytest.raises(WeightsMissingError, match="anomflow models pull wrn50-2"):
        load_wrn50("wrn50-2", tmp_path)
    with pytest.raises(WeightsMissingError):
        model_identity("wrn50-2", tmp_path)
    assert calls.MODEL_LOADS == {}


def test_official_architecture_matches_torchvision():
    """Keys and shapes equal torchvision's wide_resnet50_2 (so its IMAGENET1K_V1 file, spec wrn50-2-tv, loads
    strictly); timm's layout (spec wrn50-2) is checked in test_wrn50_weights.py."""
    from torchvision.models import wide_resnet50_2

    assert registry.MODEL_SPECS["wrn50-2-tv"].arch == registry.MODEL_SPECS["wrn50-2"].arch
    with torch.device("meta"):
        ours = build_wrn50_model(registry.MODEL_SPECS["wrn50-2-tv"]).state_dict()
        ref = wide_resnet50_2(weights=None).state_dict()
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    chans = registry.MODEL_SPECS["wrn50-2-tv"].arch["feature_channels"]
    assert [ours[f"layer{i}.0.downsample.0.weight"].shape[0] for i in (1, 2, 3)] == list(chans)


def test_official_loading_path(tmp_path, monkeypatch, no_network):
    """A tiny checkpoint posing as an official file: verified, loaded strictly, weights equal the saved ones."""
    source = load_wrn50("tiny-wrn50", tmp_path).model.state_dict()
    spec = dataclasses.replace(registry.MODEL_SPECS["tiny-wrn50"], name="fake-wrn50", tiny=False, seed=123)
    path = spec.file_path(tmp_path, "fake-wrn50.pth")
    path.parent.mkdir(parents=True)
    # like the old torchvision files: no num_batches_tracked entries, BatchNorm fills them in
    torch.save({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(spec, files=(registry.WeightFile(path.name, sha, None, path.stat().st_size),))
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)

    ident = model_identity("fake-wrn50", tmp_path)
    assert ident.weights_sha256 == sha and not ident.random_weights and not ident.tiny
    net = load_wrn50("fake-wrn50", tmp_path)
    assert net.identity == ident and calls.MODEL_LOADS["fake-wrn50"] == 1
    loaded = net.model.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    assert not any(t.is_meta for t in list(net.model.parameters()) + list(net.model.buffers()))
    imgs = _images()
    np.testing.assert_array_equal(net.features(imgs, 64), load_wrn50("tiny-wrn50", tmp_path).features(imgs, 64))
    # random_weights ignores the file and builds from the seed (a different identity and different weights)
    rnd = load_wrn50("fake-wrn50", tmp_path, random_weights=True)
    assert rnd.identity.weights_sha256.startswith(RANDOM_PREFIX)
    assert not torch.equal(rnd.model.state_dict()["conv1.weight"], loaded["conv1.weight"])
    # a file that is not the pinned one is refused
    clear_model_cache()
    torch.save(source, path)
    with pytest.raises(Exception, match="mismatch"):
        load_wrn50("fake-wrn50", tmp_path)
