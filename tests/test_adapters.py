"""Model adapters with tiny seeded models: shapes, determinism, identity, memoisation, prompt decoding, and the
official (local-files) loading paths exercised with tiny checkpoints written to a temporary models directory."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from tasks.models import calls, registry
from tasks.models.loading import (RANDOM_PREFIX, clear_model_cache, load_grounding_dino, load_sam,
                                  model_identity)
from tasks.models.weights import WeightsMissingError


pytestmark = pytest.mark.usefixtures("fresh_models")


def _images(seed: int = 0, sizes=((100, 150), (300, 200))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _register(monkeypatch, spec: registry.ModelSpec) -> None:
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)


# ------------------------------------------------------------------------------------------------ identity
def test_identity_stable_cheap_and_distinct(tmp_path):
    a = model_identity("tiny-sam", tmp_path)
    assert a == model_identity("tiny-sam", tmp_path / "elsewhere")
    assert a.weights_sha256.startswith(RANDOM_PREFIX) and a.tiny and a.random_weights
    b = model_identity("sam-vit-b", tmp_path, random_weights=True)
    assert b.weights_sha256.startswith(RANDOM_PREFIX) and not b.tiny and b.random_weights
    assert a.weights_sha256 != b.weights_sha256
    assert b.weights_sha256 != model_identity("sam-vit-l", tmp_path, random_weights=True).weights_sha256
    assert model_identity("tiny-gdino", tmp_path).weights_sha256 != a.weights_sha256
    assert set(a.as_dict()) == {"name", "weights_sha256", "tiny", "random_weights"}
    assert calls.MODEL_LOADS == {}


def test_missing_official_weights_raise(tmp_path):
    for name in ("sam-vit-b", "gdino-swint-ogc"):
        with pytest.raises(WeightsMissingError):
            model_identity(name, tmp_path)
    with pytest.raises(WeightsMissingError):
        load_sam("sam-vit-h", tmp_path)
    with pytest.raises(WeightsMissingError):
        load_grounding_dino("gdino-swint-ogc", tmp_path)
    assert calls.MODEL_LOADS == {}


def test_family_mismatch_rejected(tmp_path):
    with pytest.raises(ValueError):
        load_sam("tiny-gdino", tmp_path)


# ---------------------------------------------------------------------------------------------------- SAM
def test_sam_embed_shapes_and_batch_equals_single(tmp_path):
    sam = load_sam("tiny-sam", tmp_path)
    imgs = _images()
    batch = sam.embed(imgs)
    assert batch.shape == (2, 32, 16, 16) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    assert calls.MODEL_CALLS["tiny-sam"] == 1
    single = np.concatenate([sam.embed([im]) for im in imgs])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-5)
    assert sam.embed([]).shape == (0, 32, 16, 16)
    assert sam.encoder_batch == 1          # CPU: one image per encoder forward (memory, process scaling)
    sam.encoder_batch = None               # the whole batch in one forward, as on a GPU
    np.testing.assert_allclose(sam.embed(imgs), batch, rtol=1e-4, atol=1e-5)


def test_sam_same_seed_same_outputs(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_sam("tiny-sam", tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeding is forked, the global RNG is untouched
    e1 = first.embed(_images())
    m1, i1 = first.predict(e1[0], (100, 150), boxes=np.array([[10, 10, 80, 90]]))
    clear_model_cache()
    second = load_sam("tiny-sam", tmp_path)
    assert second is not first
    e2 = second.embed(_images())
    m2, i2 = second.predict(e2[0], (100, 150), boxes=np.array([[10, 10, 80, 90]]))
    assert np.array_equal(e1, e2) and np.array_equal(m1, m2) and np.array_equal(i1, i2)
    assert calls.MODEL_LOADS["tiny-sam"] == 2


def test_sam_memoised(tmp_path):
    assert load_sam("tiny-sam", tmp_path) is load_sam("tiny-sam", tmp_path)
    assert calls.MODEL_LOADS["tiny-sam"] == 1
    assert not load_sam("tiny-sam", tmp_path).model.training


def test_sam_predict_without_prompts_makes_no_call(tmp_path):
    sam = load_sam("tiny-sam", tmp_path)
    emb = np.zeros((32, 16, 16), np.float32)
    for kwargs in ({}, {"boxes": np.zeros((0, 4))}, {"boxes": None, "points": np.zeros((0, 2))}):
        masks, iou = sam.predict(emb, (40, 60), **kwargs)
        assert masks.shape == (0, 1, 40, 60) and masks.dtype == bool and iou.shape == (0, 1)
    masks, iou = sam.predict(emb, (40, 60), multimask=True)
    assert masks.shape == (0, 3, 40, 60) and iou.shape == (0, 3) and iou.dtype == np.float32
    assert calls.MODEL_CALLS["tiny-sam"] == 0


def test_sam_predict_boxes_points_multimask(tmp_path):
    sam = load_sam("tiny-sam", tmp_path)
    emb = sam.embed(_images(sizes=((300, 200),)))[0]
    boxes = np.array([[10, 20, 120, 200], [0, 0, 199, 299], [50, 50, 60, 70]], np.float32)
    calls.reset_counters()
    masks, iou = sam.predict(emb, (300, 200), boxes=boxes)
    assert masks.shape == (3, 1, 300, 200) and masks.dtype == bool
    assert iou.shape == (3, 1) and iou.dtype == np.float32 and np.isfinite(iou).all()
    assert calls.MODEL_CALLS["tiny-sam"] == 1  # one decoder forward for all prompts
    masks, iou = sam.predict(emb, (300, 200), boxes=boxes, multimask=True)
    assert masks.shape == (3, 3, 300, 200) and iou.shape == (3, 3)
    pts = np.array([[30, 40], [100, 100]], np.float32)
    masks, iou = sam.predict(emb, (300, 200), boxes=boxes, points=pts, point_labels=np.array([1, 0]))
    assert masks.shape == (3, 1, 300, 200)
    masks, iou = sam.predict(emb, (300, 200), points=pts)
    assert masks.shape == (1, 1, 300, 200) and iou.shape == (1, 1)
    with pytest.raises(ValueError):
        sam.predict(emb[:4], (300, 200), boxes=boxes)


def test_sam_official_architecture_matches_segment_anything():
    from segment_anything import sam_model_registry

    from tasks.models.sam import build_sam_model

    for name, key in (("sam-vit-b", "vit_b"), ("sam-vit-l", "vit_l"), ("sam-vit-h", "vit_h")):
        with torch.device("meta"):
            ours = build_sam_model(registry.MODEL_SPECS[name]).state_dict()
            ref = sam_model_registry[key](checkpoint=None).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_sam_official_loading_path(tmp_path, monkeypatch, no_network, suffix):
    """A tiny-sam checkpoint posing as an official file: verified, loaded strictly, weights equal the saved ones."""
    source = load_sam("tiny-sam", tmp_path).model.state_dict()
    spec = dataclasses.replace(registry.MODEL_SPECS["tiny-sam"], name="fake-sam", tiny=False, seed=123)
    path = spec.file_path(tmp_path, "fake" + suffix)
    path.parent.mkdir(parents=True)
    if suffix == ".pth":
        torch.save(source, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(spec, files=(registry.WeightFile(path.name, sha, None, path.stat().st_size),))
    _register(monkeypatch, spec)

    ident = model_identity("fake-sam", tmp_path)
    assert ident.weights_sha256 == sha and not ident.random_weights and not ident.tiny
    sam = load_sam("fake-sam", tmp_path)
    assert sam.identity == ident and calls.MODEL_LOADS["fake-sam"] == 1
    loaded = sam.model.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    assert not any(t.is_meta for t in list(sam.model.parameters()) + list(sam.model.buffers()))
    imgs = _images()
    np.testing.assert_array_equal(sam.embed(imgs), load_sam("tiny-sam", tmp_path).embed(imgs))
    # random_weights ignores the file and builds from the seed (a different identity and different weights)
    rnd = load_sam("fake-sam", tmp_path, random_weights=True)
    assert rnd.identity.weights_sha256.startswith(RANDOM_PREFIX)
    proj = "image_encoder.patch_embed.proj.weight"
    assert not torch.equal(rnd.model.state_dict()[proj], loaded[proj])


# ------------------------------------------------------------------------------------------- GroundingDINO
def test_normalize_caption():
    from tasks.models.grounding_dino import normalize_caption

    assert normalize_caption("  Crack. Hole ") == "crack. hole."
    assert normalize_caption("scratch.") == "scratch."


def test_resized_shape_rule():
    from tasks.models.grounding_dino import resized_shape

    assert resized_shape(480, 640, 800, 1333) == (800, 1066)
    assert resized_shape(640, 480, 800, 1333) == (1066, 800)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1330)   # short side rounded first (official rule)
    assert resized_shape(800, 800, 800, 1333) == (800, 800)


def test_gdino_detect_shapes_and_determinism(tmp_path):
    gd = load_grounding_dino("tiny-gdino", tmp_path)
    assert load_grounding_dino("tiny-gdino", tmp_path) is gd and calls.MODEL_LOADS["tiny-gdino"] == 1
    outs = gd.detect(_images(), "Scratch. crack")
    assert calls.MODEL_CALLS["tiny-gdino"] == 2 and len(outs) == 2   # two input sizes: two unpadded forwards
    t = len(outs[0].token_ids)
    assert outs[0].token_ids.dtype == np.int64 and outs[0].token_ids[0] == 101 and outs[0].token_ids[-1] == 102
    for o in outs:
        assert o.boxes_cxcywh.shape == (30, 4) and o.boxes_cxcywh.dtype == np.float32
        assert o.token_logits.shape == (30, t) and o.token_logits.dtype == np.float32
        assert np.isfinite(o.boxes_cxcywh).all() and np.isfinite(o.token_logits).all()
        assert (o.boxes_cxcywh >= 0).all() and (o.boxes_cxcywh <= 1).all()
        assert (o.token_logits >= 0).all() and (o.token_logits <= 1).all()
    clear_model_cache()
    again = load_grounding_dino("tiny-gdino", tmp_path).detect(_images(), "Scratch. crack")
    for a, b in zip(outs, again):
        assert np.array_equal(a.boxes_cxcywh, b.boxes_cxcywh) and np.array_equal(a.token_logits, b.token_logits)
    assert gd.detect([], "crack") == []


def test_gdino_phrase(tmp_path):
    gd = load_grounding_dino("tiny-gdino", tmp_path)
    ids = gd.tokenize("scuffed zipper. hole")
    pieces = gd.tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and pieces[-2] == "."
    assert any(p.startswith("##") for p in pieces)  # "scuffed" is not a whole word in the tiny vocab
    assert gd.phrase(ids, np.ones(len(ids), bool)) == "scuffed zipper hole"
    hole = np.array([p == "hole" for p in pieces])
    assert gd.phrase(ids, hole) == "hole"
    assert gd.phrase(ids, np.zeros(len(ids), bool)) == ""


def test_gdino_uses_pure_pytorch_deformable_attention(tmp_path):
    from transformers.models.grounding_dino import modeling_grounding_dino as mgd

    gd = load_grounding_dino("tiny-gdino", tmp_path)
    assert not gd.model.use_kernels
    attns = [m for m in gd.model.modules() if isinstance(m, mgd.MultiScaleDeformableAttention)]
    assert attns
    for m in attns:
        assert "forward" not in vars(m)
        assert type(m).forward.__code__.co_filename == mgd.__file__


def test_gdino_official_loading_path(tmp_path, monkeypatch, no_network):
    """save_pretrained of the tiny model + tokenizer posing as the official directory: loaded offline, equal."""
    tiny = load_grounding_dino("tiny-gdino", tmp_path)
    base = registry.MODEL_SPECS["tiny-gdino"]
    spec = dataclasses.replace(base, name="fake-gdino", tiny=False, seed=7)
    directory = spec.file_path(tmp_path, "x").parent
    tiny.model.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    files = tuple(registry.WeightFile(p.name, None, None) for p in sorted(directory.iterdir()) if p.is_file())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.filename for f in files}
    spec = dataclasses.replace(spec, files=files)
    _register(monkeypatch, spec)

    gd = load_grounding_dino("fake-gdino", tmp_path)
    assert not gd.identity.random_weights
    assert gd.identity.weights_sha256 == hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert not gd.model.use_kernels and not gd.model.training
    assert gd.model.model.special_tokens.tolist() == [101, 102, 1012, 1029]
    src, got = tiny.model.state_dict(), gd.model.state_dict()
    assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)
    caption = "scuffed zipper. hole"
    assert np.array_equal(gd.tokenize(caption), tiny.tokenize(caption))
    for a, b in zip(gd.detect(_images(), caption), tiny.detect(_images(), caption)):
        np.testing.assert_allclose(a.token_logits, b.token_logits, atol=1e-6)
        np.testing.assert_allclose(a.boxes_cxcywh, b.boxes_cxcywh, atol=1e-6)


def test_gdino_full_size_architecture():
    """The random full-size config has grounding-dino-tiny's shape (built on the meta device: no memory, fast)."""
    from transformers import GroundingDinoForObjectDetection

    from tasks.models.grounding_dino import full_config
    from tasks.models.tiny_vocab import build_vocab

    cfg = full_config(registry.MODEL_SPECS["gdino-swint-ogc"])
    assert len(build_vocab(cfg.text_config.vocab_size)) == 30522 == cfg.text_config.vocab_size
    with torch.device("meta"):
        model = GroundingDinoForObjectDetection(cfg)
    sd = model.state_dict()
    assert sd["model.text_backbone.embeddings.word_embeddings.weight"].shape == (30522, 768)
    assert sd["model.query_position_embeddings.weight"].shape == (900, 256)
    assert cfg.backbone_config.embed_dim == 96 and list(cfg.backbone_config.depths) == [2, 2, 6, 2]
    assert cfg.max_text_len == 256


# ---------------------------------------------------------------------------------- full size, seeded random
@pytest.mark.slow
def test_sam_vit_b_random_full_size(tmp_path):
    """~20 s on 2 CPU cores (build ~3 s, one 1024 x 1024 embed ~13-20 s)."""
    sam = load_sam("sam-vit-b", tmp_path, random_weights=True)
    assert sam.identity.random_weights and not sam.identity.tiny
    emb = sam.embed(_images(sizes=((768, 1024),)))
    assert emb.shape == (1, 256, 64, 64) and np.isfinite(emb).all()
    masks, iou = sam.predict(emb[0], (768, 1024), boxes=np.array([[100, 100, 500, 400]]), multimask=True)
    assert masks.shape == (1, 3, 768, 1024) and iou.shape == (1, 3)


@pytest.mark.slow
def test_gdino_random_full_size(tmp_path):
    """~15 s on 2 CPU cores (build ~5 s, one 800 x 800 forward ~10 s)."""
    gd = load_grounding_dino("gdino-swint-ogc", tmp_path, random_weights=True)
    assert gd.identity.random_weights and len(gd.tokenizer) == 30522
    out = gd.detect(_images(sizes=((800, 800),)), "scratch crack hole")[0]
    assert out.boxes_cxcywh.shape == (900, 4) and out.token_logits.shape == (900, len(out.token_ids))
    assert np.isfinite(out.token_logits).all() and np.isfinite(out.boxes_cxcywh).all()
