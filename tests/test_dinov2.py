"""DINOv2 adapter with the tiny seeded model (shapes, determinism, memoisation, counted calls), the official
(local-file) loading path exercised with a tiny checkpoint, and the official architecture against timm's."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import timm
import torch

from tasks.models import calls, registry
from tasks.models.dinov2 import build_dinov2_model
from tasks.models.loading import RANDOM_PREFIX, clear_model_cache, load_dinov2, model_identity
from tasks.models.weights import WeightsMissingError

pytestmark = pytest.mark.usefixtures("fresh_models")


def _images(seed: int = 0, sizes=((50, 70), (90, 60), (64, 64))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# ----------------------------------------------------------------------------------------------------- tiny
@pytest.mark.parametrize("size", [112, 56])
def test_tiny_shapes(tmp_path, size):
    net = load_dinov2("tiny-dinov2", tmp_path)
    patches, cls = net.tokens(_images(), size)
    g = size // 14
    assert patches.shape == (3, 32, g, g) and patches.dtype == np.float32 and np.isfinite(patches).all()
    assert cls.shape == (3, 32) and cls.dtype == np.float32
    assert net.channels == 32 and net.grid(size) == g
    empty_patches, empty_cls = net.tokens([], size)
    assert empty_patches.shape == (0, 32, g, g) and empty_cls.shape == (0, 32)


def test_default_size_and_bad_input(tmp_path):
    net = load_dinov2("tiny-dinov2", tmp_path)
    assert net.features(_images()[:1]).shape == (1, 32, 8, 8)  # spec.preprocess.size = 112
    for size in (100, 0):
        with pytest.raises(ValueError, match="multiple of the patch size"):
            net.features(_images(), size)
    with pytest.raises(ValueError):
        net.features([np.zeros((10, 10), np.uint8)], 28)
    with pytest.raises(ValueError):
        net.features([np.zeros((10, 10, 3), np.float32)], 28)
    assert calls.MODEL_CALLS["tiny-dinov2"] == 1


def test_one_counted_call_per_forward_and_batch_equals_single(tmp_path):
    net = load_dinov2("tiny-dinov2", tmp_path)
    imgs = _images()
    batch, cls = net.tokens(imgs, 56)
    assert calls.MODEL_CALLS["tiny-dinov2"] == 1
    net.features([], 56)
    assert calls.MODEL_CALLS["tiny-dinov2"] == 1
    single = [net.tokens([im], 56) for im in imgs]
    assert calls.MODEL_CALLS["tiny-dinov2"] == 4
    np.testing.assert_allclose(batch, np.concatenate([p for p, _ in single]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cls, np.concatenate([c for _, c in single]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(net.features(imgs, 56), batch)
    # not degenerate: tokens differ between images and between locations
    assert np.abs(batch[0] - batch[1]).max() > 1e-2 and np.abs(batch[0, :, 0, 0] - batch[0, :, 3, 2]).max() > 1e-2


def test_deterministic_memoised_identity(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_dinov2("tiny-dinov2", tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeding is forked, the global RNG is untouched
    assert load_dinov2("tiny-dinov2", tmp_path / "elsewhere") is first and not first.model.training
    assert calls.MODEL_LOADS["tiny-dinov2"] == 1
    a = first.features(_images(), 56)
    clear_model_cache()
    second = load_dinov2("tiny-dinov2", tmp_path)
    assert second is not first and calls.MODEL_LOADS["tiny-dinov2"] == 2
    assert np.array_equal(a, second.features(_images(), 56))
    assert first.identity == model_identity("tiny-dinov2", tmp_path)
    assert first.identity.weights_sha256.startswith(RANDOM_PREFIX) and first.identity.tiny
    full = model_identity("dinov2-vits14", tmp_path, random_weights=True)
    assert full.weights_sha256.startswith(RANDOM_PREFIX) and full.weights_sha256 != first.identity.weights_sha256


def test_family_mismatch_and_missing_official_weights(tmp_path):
    with pytest.raises(ValueError):
        load_dinov2("tiny-wrn50", tmp_path)
    for name in ("dinov2-vits14", "dinov2-vit-s-14:lvd142m"):
        with pytest.raises(WeightsMissingError, match="anomflow models pull dinov2-vits14") as err:
            load_dinov2(name, tmp_path)
        assert err.value.filename == "model.safetensors"
    assert calls.MODEL_LOADS == {}


# -------------------------------------------------------------------------------------------------- official
def test_official_loading_path(tmp_path, monkeypatch, no_network):
    """A tiny safetensors file posing as the official one: verified, assigned strictly, outputs equal the source."""
    from safetensors.torch import save_file

    source = load_dinov2("tiny-dinov2", tmp_path).model.state_dict()
    spec = dataclasses.replace(registry.MODEL_SPECS["tiny-dinov2"], name="fake-dinov2", tiny=False, seed=9)
    path = spec.file_path(tmp_path, "model.safetensors")
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(spec, files=(registry.WeightFile(path.name, sha, None, path.stat().st_size),))
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)

    net = load_dinov2("fake-dinov2", tmp_path)
    assert net.identity == model_identity("fake-dinov2", tmp_path)
    assert net.identity.weights_sha256 == sha and not net.identity.random_weights
    assert calls.MODEL_LOADS["fake-dinov2"] == 1
    loaded = net.model.state_dict()
    assert loaded.keys() == source.keys() and all(torch.equal(loaded[k], source[k]) for k in source)
    imgs = _images()
    np.testing.assert_array_equal(net.features(imgs, 56), load_dinov2("tiny-dinov2", tmp_path).features(imgs, 56))
    rnd = load_dinov2("fake-dinov2", tmp_path, random_weights=True)  # the file is ignored: seed 9's weights
    assert rnd.identity.weights_sha256.startswith(RANDOM_PREFIX)
    assert not torch.equal(rnd.model.state_dict()["patch_embed.proj.weight"], loaded["patch_embed.proj.weight"])
    # a file missing a tensor is refused (strict), even with a matching pin
    clear_model_cache()
    save_file({k: v.contiguous() for k, v in source.items() if k != "cls_token"}, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, dataclasses.replace(
        spec, files=(registry.WeightFile(path.name, sha, None, path.stat().st_size),)))
    with pytest.raises(RuntimeError, match="cls_token"):
        load_dinov2("fake-dinov2", tmp_path)


def test_official_architecture_matches_timm():
    """Keys and shapes equal timm's vit_small_patch14_dinov2 (so the lvd142m model.safetensors loads strictly)."""
    spec = registry.get_spec("dinov2-vits14")
    with torch.device("meta"):
        ours = build_dinov2_model(spec)
        ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in b)
    assert a["pos_embed"].shape == (1, 1 + 37 * 37, 384) and ours.num_prefix_tokens == 1


def test_registry_matches_timm_pretrained_cfg():
    cfg = timm.models.get_pretrained_cfg("vit_small_patch14_dinov2.lvd142m")
    spec = registry.get_spec("dinov2-vits14")
    assert (spec.architecture, spec.tag) == ("dinov2-vit-s-14", cfg.tag) and cfg.architecture == "vit_small_patch14_dinov2"
    assert cfg.input_size == (3, spec.preprocess.size, spec.preprocess.size) == (3, 518, 518)
    assert tuple(cfg.mean) == spec.preprocess.mean and tuple(cfg.std) == spec.preprocess.std
    (wf,) = spec.files
    assert wf.filename == "model.safetensors" and wf.url.endswith("/model.safetensors")
    assert wf.url.startswith(f"https://huggingface.co/{cfg.hf_hub_id}/resolve/")
    assert registry.tiny_twin("dinov2-vits14") == "tiny-dinov2"
