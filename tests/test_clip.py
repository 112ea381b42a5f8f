"""CLIP adapter with the tiny seeded model (shapes, determinism, memoisation, counted calls, parity of the token
path with open_clip's own forward), the official (local-file) loading path exercised with tiny checkpoints, and the
official architectures and tags against open_clip's configs."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from tasks.models import calls, registry
from tasks.models.clip import build_clip_model, build_seeded_clip
from tasks.models.loading import RANDOM_PREFIX, clear_model_cache, load_clip, model_identity
from tasks.models.vit_input import square_batch
from tasks.models.weights import WeightsMissingError

pytestmark = pytest.mark.usefixtures("fresh_models")

PROMPTS = ["a photo of a flawless screw", "a photo of a damaged screw", "scratch"]
OFFICIAL = {"clip-vit-l-14-336": ("ViT-L-14-336", "openai"),
            "clip-vit-b-16-plus-240": ("ViT-B-16-plus-240", "laion400m_e31"),
            "clip-vit-b-16-plus-240-e32": ("ViT-B-16-plus-240", "laion400m_e32")}


def _images(seed: int = 0, sizes=((50, 70), (90, 60), (64, 64))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# ----------------------------------------------------------------------------------------------------- tiny
def test_tiny_image_shapes(tmp_path):
    clip = load_clip("tiny-clip", tmp_path)
    glob, tokens = clip.encode_image_tokens(_images())  # spec.preprocess.size = 64, patch 16
    assert glob.shape == (3, 32) and tokens.shape == (3, 16, 32)
    assert glob.dtype == tokens.dtype == np.float32 and np.isfinite(tokens).all()
    glob, tokens = clip.encode_image_tokens(_images(), 96)  # another grid: position embedding resampled
    assert glob.shape == (3, 32) and tokens.shape == (3, 36, 32) and np.isfinite(glob).all()
    empty_glob, empty_tokens = clip.encode_image_tokens([], 96)
    assert empty_glob.shape == (0, 32) and empty_tokens.shape == (0, 36, 32)
    for size in (100, 0):
        with pytest.raises(ValueError, match="multiple of the patch size"):
            clip.encode_image_tokens(_images(), size)
    with pytest.raises(ValueError):
        clip.encode_image_tokens([np.zeros((10, 10, 3), np.float32)])
    assert calls.MODEL_CALLS["tiny-clip"] == 2


def test_tiny_text(tmp_path, no_network):
    clip = load_clip("tiny-clip", tmp_path)  # the tokenizer's vocabulary ships with open_clip: no download
    emb = clip.encode_text(PROMPTS)
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3
    assert clip.encode_text([]).shape == (0, 32)
    assert calls.MODEL_CALLS["tiny-clip"] == 1
    ids = clip.tokenize(PROMPTS)
    assert ids.shape == (3, 77) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, open_clip.tokenize(PROMPTS).numpy())
    for arch in ("ViT-L-14-336", "ViT-B-16-plus-240"):  # what open_clip picks for the official architectures
        np.testing.assert_array_equal(ids, open_clip.get_tokenizer(arch)(PROMPTS).numpy())


def test_batch_equals_single_one_call_each(tmp_path):
    clip = load_clip("tiny-clip", tmp_path)
    imgs = _images()
    glob, tokens = clip.encode_image_tokens(imgs)
    single = [clip.encode_image_tokens([im]) for im in imgs]
    assert calls.MODEL_CALLS["tiny-clip"] == 4
    np.testing.assert_allclose(glob, np.concatenate([g for g, _ in single]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tokens, np.concatenate([t for _, t in single]), rtol=1e-4, atol=1e-5)
    text = clip.encode_text(PROMPTS)
    np.testing.assert_allclose(text, np.concatenate([clip.encode_text([p]) for p in PROMPTS]), rtol=1e-4, atol=1e-5)


def test_deterministic_memoised_identity(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_clip("tiny-clip", tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert load_clip("tiny-clip", tmp_path / "elsewhere") is first and not first.model.training
    assert calls.MODEL_LOADS["tiny-clip"] == 1
    a, b = first.encode_image_tokens(_images()), first.encode_text(PROMPTS)
    clear_model_cache()
    second = load_clip("tiny-clip", tmp_path)
    assert second is not first and calls.MODEL_LOADS["tiny-clip"] == 2
    assert np.array_equal(a[1], second.encode_image_tokens(_images())[1])
    assert np.array_equal(b, second.encode_text(PROMPTS))
    assert first.identity == model_identity("tiny-clip", tmp_path) and first.identity.tiny
    assert first.identity.weights_sha256.startswith(RANDOM_PREFIX)


# ----------------------------------------------------------------------------------------- parity with open_clip
def test_token_path_equals_open_clip_forward(tmp_path):
    """At the trained size, encode_image_tokens is open_clip's VisionTransformer forward with output_tokens=True
    (and its global embedding is CLIP.encode_image); text is CLIP.encode_text(normalize=True)."""
    clip = load_clip("tiny-clip", tmp_path)
    x = square_batch(_images(), 64, clip._mean, clip._std)
    visual = clip.model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            ref_glob, ref_tokens = visual(x)
    finally:
        visual.output_tokens = False
    glob, tokens = clip.encode_image_tokens(_images())
    torch.testing.assert_close(torch.from_numpy(glob), ref_glob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(tokens), ref_tokens, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(glob), clip.model.encode_image(x), rtol=1e-5, atol=1e-5)
        ref_text = clip.model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    torch.testing.assert_close(torch.from_numpy(clip.encode_text(PROMPTS)), ref_text, rtol=1e-5, atol=1e-5)


def test_resampled_position_embedding_equals_open_clips(tmp_path):
    """Another input size uses what open_clip's resize_pos_embed (force_image_size) would load into the model."""
    from open_clip.model import resize_pos_embed

    clip = load_clip("tiny-clip", tmp_path)
    spec = registry.get_spec("tiny-clip")
    bigger = dataclasses.replace(spec, arch={**spec.arch, "vision_cfg": {**spec.arch["vision_cfg"], "image_size": 96}})
    state = {k: v.clone() for k, v in clip.model.state_dict().items()}
    resize_pos_embed(state, build_seeded_clip(bigger))
    with torch.no_grad():
        ours = clip._position_embedding(6, 6)
    assert ours.shape == (1 + 36, 32)
    torch.testing.assert_close(ours, state["visual.positional_embedding"])


# -------------------------------------------------------------------------------------------------- official
def _save(source: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    else:  # an open_clip training checkpoint: wrapped, DataParallel prefixes, extra plain entries
        torch.save({"epoch": 31, "name": "fake", "state_dict": {f"module.{k}": v for k, v in source.items()}}, path)


@pytest.mark.parametrize("filename", ["open_clip_model.safetensors", "fake-laion400m_e31-12345678.pt"])
def test_official_loading_path(tmp_path, monkeypatch, no_network, filename):
    """A tiny checkpoint posing as an official file: verified, assigned strictly, outputs equal the source model."""
    tiny = load_clip("tiny-clip", tmp_path)
    source = tiny.model.state_dict()
    assert "attn_mask" not in source  # non-persistent: the loader must rebuild it
    spec = dataclasses.replace(registry.MODEL_SPECS["tiny-clip"], name="fake-clip", tiny=False, seed=4)
    path = spec.file_path(tmp_path, filename)
    path.parent.mkdir(parents=True)
    _save(source, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(spec, files=(registry.WeightFile(filename, sha, None, path.stat().st_size),))
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)

    clip = load_clip("fake-clip", tmp_path)
    assert clip.identity.weights_sha256 == sha and not clip.identity.random_weights
    assert calls.MODEL_LOADS["fake-clip"] == 1
    loaded = clip.model.state_dict()
    assert loaded.keys() == source.keys() and all(torch.equal(loaded[k], source[k]) for k in source)
    assert not any(t.is_meta for t in list(clip.model.parameters()) + list(clip.model.buffers()))
    torch.testing.assert_close(clip.model.attn_mask, tiny.model.attn_mask)
    np.testing.assert_array_equal(clip.encode_text(PROMPTS), tiny.encode_text(PROMPTS))
    for a, b in zip(clip.encode_image_tokens(_images()), tiny.encode_image_tokens(_images())):
        np.testing.assert_array_equal(a, b)
    rnd = load_clip("fake-clip", tmp_path, random_weights=True)  # the file is ignored: seed 4's weights
    assert rnd.identity.weights_sha256.startswith(RANDOM_PREFIX)
    assert not torch.equal(rnd.model.state_dict()["visual.conv1.weight"], loaded["visual.conv1.weight"])


def test_missing_official_weights(tmp_path):
    for name in [*OFFICIAL, "clip-vit-b-16-plus-240:laion400m_e32"]:
        spec = registry.get_spec(name)
        with pytest.raises(WeightsMissingError, match=f"anomflow models pull {spec.name}") as err:
            load_clip(name, tmp_path)
        assert err.value.filename == spec.files[0].filename
    with pytest.raises(ValueError):
        load_clip("tiny-dinov2", tmp_path)
    assert calls.MODEL_LOADS == {}


def test_official_architectures_match_open_clip():
    """Keys and shapes equal open_clip's own model (so its released files load strictly); OpenAI's tag runs with
    QuickGELU as trained (open_clip 3.3 only warns when the plain config is used with it)."""
    for name, (oc_name, tag) in OFFICIAL.items():
        spec = registry.get_spec(name)
        cfg = open_clip.get_model_config(oc_name)
        assert {k: spec.arch[k] for k in cfg} == cfg
        pretrained = open_clip.get_pretrained_cfg(oc_name, tag)
        assert spec.arch["quick_gelu"] == pretrained.get("quick_gelu", False)
        with torch.device("meta"):
            ours = build_clip_model(spec)
            ref = open_clip.create_model(oc_name, pretrained=None, device="meta")
        a, b = ours.state_dict(), ref.state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in b)
        assert isinstance(ours.visual.transformer.resblocks[0].mlp.gelu, QuickGELU) == spec.arch["quick_gelu"]


def test_registry_matches_open_clip_pretrained_cfgs():
    for name, (oc_name, tag) in OFFICIAL.items():
        spec, pretrained = registry.get_spec(name), open_clip.get_pretrained_cfg(oc_name, tag)
        assert registry.get_spec(f"{spec.architecture}:{tag}") is spec and spec.tag == tag
        assert spec.preprocess.size == open_clip.get_model_config(oc_name)["vision_cfg"]["image_size"]
        assert spec.preprocess.mean == pretrained["mean"] and spec.preprocess.std == pretrained["std"]
        (wf,) = spec.files
        if tag == "openai":  # open_clip's url is a TorchScript archive; its hf-hub copy is what it loads
            assert wf.url == f"https://huggingface.co/{pretrained['hf_hub']}resolve/main/{wf.filename}"
            assert wf.filename == "open_clip_model.safetensors"
        else:
            assert wf.url == pretrained["url"] and wf.url.endswith("/" + wf.filename)
        assert registry.tiny_twin(name) == "tiny-clip"
    assert registry.get_spec("clip-vit-b-16-plus-240").files != registry.get_spec("clip-vit-b-16-plus-240-e32").files
