"""FeatUp's JBU stack (tasks.models.featup): the official checkpoint's key layout, strict loading of a Lightning-style
file, one stage against a brute-force evaluation of the official formulas, the stack's wiring and fixup choice, the
adapter (guidance, factors, counted calls, bad input), the registry entries; and the non-learned substitutes
(tasks.models.joint_bilateral) against cv2 / scipy / hand-computed values."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.special import erf
from typer.testing import CliRunner

from flows.cli.models_cmd import models_app
from tasks.models import calls, registry
from tasks.models.featup import build_featup_model, channel_norm
from tasks.models.joint_bilateral import bilinear_upsample, joint_bilateral_upsample
from tasks.models.loading import RANDOM_PREFIX, clear_model_cache, load_dinov2, load_featup, load_model, model_identity
from tasks.models.weights import WeightsMissingError

pytestmark = pytest.mark.usefixtures("fresh_models")
OFFICIAL_FILE = "dinov2_jbu_stack_cocostuff.ckpt"


def _images(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 10 * i, 60 - 5 * i, 3), dtype=np.uint8) for i in range(n)]


def _features(batch: int, channels: int, grid: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, channels, grid, grid)).astype(np.float32)


# ------------------------------------------------------------------------------------------ official layout
def _official_jbu_shapes(feat_dim: int, key_dim: int = 32, diameter: int = 7, guidance: int = 3) -> dict:
    """Key -> shape of FeatUp's JBUStack(feat_dim) state dict, written out from featup/upsamplers.py:
    JBULearnedRange(3, feat_dim, 32, radius=3) x 4 (range_proj / fixup_proj = Conv, GELU, Dropout2d, Conv) and
    fixup_proj = Sequential(Dropout2d, Conv2d(feat_dim, feat_dim, 1))."""
    taps = diameter * diameter
    shapes = {}
    for k in range(1, 5):
        shapes.update({
            f"up{k}.range_temp": (), f"up{k}.sigma_spatial": (),
            f"up{k}.range_proj.0.weight": (key_dim, guidance, 1, 1), f"up{k}.range_proj.0.bias": (key_dim,),
            f"up{k}.range_proj.3.weight": (key_dim, key_dim, 1, 1), f"up{k}.range_proj.3.bias": (key_dim,),
            f"up{k}.fixup_proj.0.weight": (taps, taps + guidance, 1, 1), f"up{k}.fixup_proj.0.bias": (taps,),
            f"up{k}.fixup_proj.3.weight": (taps, taps, 1, 1), f"up{k}.fixup_proj.3.bias": (taps,),
        })
    shapes.update({"fixup_proj.1.weight": (feat_dim, feat_dim, 1, 1), "fixup_proj.1.bias": (feat_dim,)})
    return shapes


def test_official_architecture_has_the_checkpoint_keys_and_shapes():
    spec = registry.get_spec("featup-jbu-dinov2")
    with torch.device("meta"):
        model = build_featup_model(spec)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _official_jbu_shapes(384)
    assert sum(math.prod(s) for s in ours.values()) == 4 * (128 + 1056 + 2597 + 2450 + 2) + 384 * 385


def _lightning_checkpoint(jbu_state: dict, channels: int) -> dict:
    """A file laid out as FeatUp's training writes it: the JBU stack under ``upsampler.``, next to the backbone,
    ChannelNorm, downsampler and scale net, plus Lightning's bookkeeping (all plain containers and tensors)."""
    state = {f"upsampler.{k}": v.clone() for k, v in jbu_state.items()}
    state.update({"model.0.model.cls_token": torch.zeros(1, 1, channels), "model.1.norm.weight": torch.ones(channels),
                  "model.1.norm.bias": torch.zeros(channels), "downsampler.w": torch.rand(1, 1, 14, 14),
                  "scale_net.net.weight": torch.rand(1, channels, 1, 1), "scale_net.net.bias": torch.rand(1)})
    return {"epoch": 0, "global_step": 2000, "pytorch-lightning_version": "1.9.0", "state_dict": state,
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}],
            "lr_schedulers": [], "callbacks": {"ModelCheckpoint": {"dirpath": "ckpt", "best_model_score": None}}}


def _register_fake(monkeypatch, tmp_path: Path, payload) -> Path:
    """Save ``payload`` as the official file of a tiny-sized non-tiny spec 'fake-featup', pinned to its sha256."""
    spec = dataclasses.replace(registry.MODEL_SPECS["tiny-featup-jbu"], name="fake-featup", tiny=False, seed=9)
    path = spec.file_path(tmp_path, OFFICIAL_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(spec, files=(registry.WeightFile(OFFICIAL_FILE, sha, None, path.stat().st_size),))
    monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)
    return path


def test_official_loading_path_reads_the_upsampler_strictly(tmp_path, monkeypatch, no_network):
    tiny = load_featup("tiny-featup-jbu", tmp_path)
    source = tiny.model.state_dict()
    _register_fake(monkeypatch, tmp_path, _lightning_checkpoint(source, 32))
    net = load_model("fake-featup", tmp_path)
    assert net.identity == model_identity("fake-featup", tmp_path) and not net.identity.random_weights
    loaded = net.model.state_dict()
    assert loaded.keys() == source.keys() and all(torch.equal(loaded[k], source[k]) for k in source)
    feats, imgs = _features(2, 32, 8), _images()
    np.testing.assert_array_equal(net.upsample(feats, imgs, 8), tiny.upsample(feats, imgs, 8))
    # a file saved straight from the module (no prefix) loads too
    clear_model_cache()
    _register_fake(monkeypatch, tmp_path, {"state_dict": dict(source)})
    assert torch.equal(load_featup("fake-featup", tmp_path).model.state_dict()["up3.range_temp"],
                       source["up3.range_temp"])
    # strict: a missing or misshapen tensor is refused, naming it and the file
    clear_model_cache()
    broken = _lightning_checkpoint(source, 32)
    del broken["state_dict"]["upsampler.up2.sigma_spatial"]
    _register_fake(monkeypatch, tmp_path, broken)
    with pytest.raises(RuntimeError, match=r"up2\.sigma_spatial") as err:
        load_featup("fake-featup", tmp_path)
    assert OFFICIAL_FILE in str(err.value)
    broken = _lightning_checkpoint(source, 32)
    broken["state_dict"]["upsampler.fixup_proj.1.bias"] = torch.zeros(33)
    _register_fake(monkeypatch, tmp_path, broken)
    with pytest.raises(RuntimeError, match=r"fixup_proj\.1\.bias"):
        load_featup("fake-featup", tmp_path)
    # arbitrary pickled objects are never unpickled
    _register_fake(monkeypatch, tmp_path, {"state_dict": dict(source), "hparams": Path("somewhere")})
    with pytest.raises(ValueError, match="does not unpickle"):
        load_featup("fake-featup", tmp_path)


def test_registry_entries_and_missing_official_weights(tmp_path):
    spec = registry.get_spec("featup-jbu-dinov2")
    assert (spec.family, spec.tag, spec.tiny) == ("featup", "cocostuff", False)
    assert registry.get_spec("featup-jbu-dinov2:cocostuff") is spec
    assert spec.arch == dict(feat_dim=384, key_dim=32, radius=3, stages=4, guidance_dim=3, patch_size=14)
    assert (spec.preprocess.size, spec.preprocess.mean, spec.preprocess.std) == \
           (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (wf,) = spec.files
    # hubconf.py: f".../pretrained/{exp_dir}{model_name}_jbu_stack_cocostuff.ckpt", exp_dir "" when use_norm=True
    assert wf.filename == OFFICIAL_FILE and wf.sha256 is None
    assert wf.url == ("https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/"
                      + OFFICIAL_FILE)
    assert registry.tiny_twin("featup-jbu-dinov2") == "tiny-featup-jbu"
    tiny = registry.get_spec("tiny-featup-jbu")
    assert tiny.tiny and tiny.arch["feat_dim"] == registry.get_spec("tiny-dinov2").arch["embed_dim"] == 32
    with pytest.raises(WeightsMissingError) as err:
        load_model("featup-jbu-dinov2", tmp_path)
    assert err.value.filename == OFFICIAL_FILE and "anomflow models import featup-jbu-dinov2" in str(err.value)
    with pytest.raises(ValueError, match="featup"):
        load_featup("tiny-dinov2", tmp_path)
    assert calls.MODEL_LOADS == {}
    full = load_featup("featup-jbu-dinov2", tmp_path, random_weights=True)  # full size, seeded
    assert full.identity.weights_sha256.startswith(RANDOM_PREFIX) and full.channels == 384
    assert full.upsample(_features(1, 384, 16), _images(1), 2).shape == (1, 384, 32, 32)


def test_models_list_shows_both_entries(tmp_path):
    res = CliRunner().invoke(models_app, ["list", "--models-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.strip()}
    assert rows["featup-jbu-dinov2"][:7] == ["featup-jbu-dinov2", "featup-jbu-dinov2", "cocostuff", "featup",
                                             "official", OFFICIAL_FILE, "not"]
    assert "MISSING" in " ".join(rows["featup-jbu-dinov2"])
    assert rows["tiny-featup-jbu"][:5] == ["tiny-featup-jbu", "tiny-featup-jbu", "-", "featup", "tiny"]


# ---------------------------------------------------------------------------------------- the JBU arithmetic
def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _conv1x1(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x: Cin x ... -> Cout x ... (a 1x1 convolution written as a matrix product)."""
    return np.tensordot(weight[:, :, 0, 0], x, axes=(1, 0)) + bias.reshape(-1, *([1] * (x.ndim - 1)))


def _reflect(k: int, n: int) -> int:
    return -k if k < 0 else 2 * (n - 1) - k if k >= n else k


def _brute_force_stage(sd: dict, radius: int, source: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """One image through one JBU stage, pixel by pixel in float64, from FeatUp's formulas (see featup.py)."""
    sd = {k: v.double().numpy() for k, v in sd.items()}
    diameter, (_, height, width) = 2 * radius + 1, guidance.shape
    keys = _conv1x1(_gelu(_conv1x1(guidance, sd["range_proj.0.weight"], sd["range_proj.0.bias"])),
                    sd["range_proj.3.weight"], sd["range_proj.3.bias"])
    temperature = np.clip(np.exp(sd["range_temp"]), 1e-4, 1e4)
    u = np.linspace(-1.0, 1.0, diameter)
    hr = F.interpolate(torch.from_numpy(source[None]).double(), (height, width), mode="bicubic",
                       align_corners=False)[0].numpy()
    out = np.zeros((source.shape[0], height, width))
    for y in range(height):
        for x in range(width):
            logits, spatial, values = [], [], []
            for i in range(diameter):          # row offset i - r
                for j in range(diameter):      # column offset j - r
                    yy, xx = _reflect(y + i - radius, height), _reflect(x + j - radius, width)
                    logits.append(temperature * keys[:, yy, xx] @ keys[:, y, x])
                    spatial.append(math.exp(-(u[i] ** 2 + u[j] ** 2) / (2 * sd["sigma_spatial"] ** 2)))
                    values.append(hr[:, yy, xx])
            logits = np.array(logits)
            range_kernel = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            kernel = range_kernel * np.array(spatial)
            kernel /= kernel.sum()
            fixup_in = np.concatenate([kernel, guidance[:, y, x]])     # kernel taps first, then the guidance
            hidden = _gelu(_conv1x1(fixup_in, sd["fixup_proj.0.weight"], sd["fixup_proj.0.bias"]))
            kernel = kernel + 0.1 * _conv1x1(hidden, sd["fixup_proj.3.weight"], sd["fixup_proj.3.bias"])
            out[:, y, x] = np.array(values).T @ kernel
    return out


def test_one_stage_equals_brute_force(tmp_path):
    stage = load_featup("tiny-featup-jbu", tmp_path).model.up2
    with torch.no_grad():  # a non-trivial temperature and spatial sigma (the initial ones are 1.0 and 1.0)
        stage.range_temp.fill_(0.8)
        stage.sigma_spatial.fill_(0.6)
    rng = np.random.default_rng(3)
    source = rng.standard_normal((2, 32, 3, 4)).astype(np.float32)
    guidance = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    with torch.no_grad():
        ours = stage(torch.from_numpy(source), torch.from_numpy(guidance)).numpy()
    assert ours.shape == (2, 32, 6, 8)
    for b in range(2):
        np.testing.assert_allclose(ours[b], _brute_force_stage(stage.state_dict(), 3, source[b], guidance[b]),
                                   rtol=1e-4, atol=1e-5)


def test_stack_wiring_fixup_choice_and_guidance(tmp_path):
    net = load_featup("tiny-featup-jbu", tmp_path)
    stack, imgs, feats = net.model, _images(), _features(2, 32, 4)
    guidance = net.guidance(imgs, 4)
    # guidance = the backbone's input: PIL bicubic squash to grid x 14, /255, ImageNet mean / std
    manual = np.stack([(np.asarray(Image.fromarray(im).resize((56, 56), Image.BICUBIC), np.float32) / 255.0
                        - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]) for im in imgs])
    np.testing.assert_allclose(guidance.numpy(), manual.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out = torch.from_numpy(feats)
        by_stage = []
        for k in range(1, 5):
            out = getattr(stack, f"up{k}")(out, F.adaptive_avg_pool2d(guidance, (2 * out.shape[-2],) * 2))
            by_stage.append(out.numpy())
        weight, bias = (stack.fixup_proj[1].weight.numpy(), stack.fixup_proj[1].bias.numpy())

    def fixed(x):
        return x + 0.1 * np.stack([_conv1x1(im, weight, bias) for im in x])

    assert net.max_factor == 16
    for factor, stages in ((2, 1), (4, 2), (8, 3)):  # below x16: no fixup unless asked (METHODS §4.4)
        np.testing.assert_allclose(net.upsample(feats, imgs, factor), by_stage[stages - 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.upsample(feats, imgs, 8, apply_fixup=True), fixed(by_stage[2]), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(net.upsample(feats, imgs, 16), fixed(by_stage[3]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.upsample(feats, imgs, 16, apply_fixup=False), by_stage[3], rtol=1e-5, atol=1e-5)
    assert np.abs(fixed(by_stage[2]) - by_stage[2]).max() > 1e-3  # the fixup is not a no-op here
    # guided: another image changes the result
    assert np.abs(net.upsample(feats, _images(seed=5), 2) - by_stage[0]).max() > 1e-3


def test_tiny_twin_deterministic_shapes_and_counted_calls(tmp_path):
    rng_before = torch.get_rng_state()
    first = load_featup("tiny-featup-jbu", tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before) and not first.model.training
    assert load_featup("tiny-featup-jbu", tmp_path / "elsewhere") is first and calls.MODEL_LOADS["tiny-featup-jbu"] == 1
    # the twin takes tiny-dinov2's tokens: 112 px -> 8 x 8 x 32
    imgs = _images()
    feats = load_dinov2("tiny-dinov2", tmp_path).features(imgs)
    assert feats.shape == (2, 32, 8, 8)
    for n, factor in enumerate((2, 4, 8, 16), start=1):
        out = first.upsample(feats[:1], imgs[:1], factor)
        assert out.shape == (1, 32, 8 * factor, 8 * factor) and out.dtype == np.float32 and np.isfinite(out).all()
        assert calls.MODEL_CALLS["tiny-featup-jbu"] == n
    assert first.upsample(feats[:0], [], 4).shape == (0, 32, 32, 32) and calls.MODEL_CALLS["tiny-featup-jbu"] == 4
    a = first.upsample(feats, imgs, 4)
    clear_model_cache()
    second = load_featup("tiny-featup-jbu", tmp_path)
    assert second is not first and calls.MODEL_LOADS["tiny-featup-jbu"] == 2
    np.testing.assert_array_equal(a, second.upsample(feats, imgs, 4))
    reseeded = build_featup_model(dataclasses.replace(second.spec, seed=1))
    assert not torch.equal(reseeded.state_dict()["up1.range_proj.0.weight"],
                           second.model.state_dict()["up1.range_proj.0.weight"])
    assert first.identity == model_identity("tiny-featup-jbu", tmp_path) and first.identity.tiny
    assert first.identity.weights_sha256 != model_identity("featup-jbu-dinov2", tmp_path, True).weights_sha256


def test_adapter_refuses_bad_input(tmp_path):
    net = load_featup("tiny-featup-jbu", tmp_path)
    feats, imgs = _features(2, 32, 4), _images()
    cases = [((feats, imgs, 3), "not one of 2, 4, 8, 16"), ((feats, imgs, 32), "not one of"),
             ((feats[:, :16], imgs, 2), "32-channel"), ((feats[..., :3], imgs, 2), "square"),
             ((feats, imgs[:1], 2), "one guidance image per map"), ((feats.astype(np.int32), imgs, 2), "float"),
             ((feats, [imgs[0], imgs[1][..., 0]], 2), "uint8")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            net.upsample(*args)
    with pytest.raises(ValueError, match="too small"):  # a 1 x 1 grid: the first stage is 2 x 2 < radius 3
        net.upsample(feats[..., :1, :1], imgs, 2)
    assert calls.MODEL_CALLS["tiny-featup-jbu"] == 0


def test_channel_norm_is_a_layer_norm_over_channels():
    x = _features(2, 5, 3) * 4 + 1
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(channel_norm(x), (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- non-learned substitutes
def test_bilinear_upsample_matches_cv2():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    for factor in (1, 4):
        ours = bilinear_upsample(x, factor)
        ref = np.stack([np.stack([cv2.resize(c, (7 * factor, 5 * factor), interpolation=cv2.INTER_LINEAR)
                                  for c in im]) for im in x])
        assert isinstance(ours, np.ndarray) and ours.shape == (2, 3, 5 * factor, 7 * factor)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert isinstance(bilinear_upsample(torch.from_numpy(x), 2), torch.Tensor)
    with pytest.raises(ValueError, match="positive integer"):
        bilinear_upsample(x, 0)


def test_joint_bilateral_with_constant_guidance_is_gaussian_smoothed_bilinear():
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 5)).astype(np.float32)
    out = joint_bilateral_upsample(torch.from_numpy(x), torch.full((1, 3, 40, 50), 0.3), 4)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 16, 20)
    expected = x[0].astype(np.float64)
    for _ in range(2):  # per x2 stage: bilinear x2, then a radius-3 sigma-1 Gaussian, mirrored at the borders
        expected = np.stack([cv2.resize(c.astype(np.float32), (2 * c.shape[1], 2 * c.shape[0]),
                                        interpolation=cv2.INTER_LINEAR) for c in expected])
        expected = ndi.gaussian_filter(expected.astype(np.float64), sigma=(0, 1, 1), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)


def test_joint_bilateral_keeps_a_guidance_edge_sharper_than_bilinear():
    feats = torch.zeros(1, 1, 8, 8)
    feats[..., 4:] = 1.0                                  # a feature step between grid columns 3 and 4
    edge = torch.zeros(1, 3, 64, 64)
    edge[..., 32:] = 1.0                                  # the same step in the guidance, at pixel column 32
    guided = joint_bilateral_upsample(feats, edge, 8)[0, 0]
    unguided = joint_bilateral_upsample(feats, torch.full_like(edge, 0.5), 8)[0, 0]
    bilinear = bilinear_upsample(feats, 8)[0, 0]

    def jump(m):  # contrast across the guidance edge, mean over rows
        return float((m[:, 32] - m[:, 31]).mean())

    # measured: guided ~0.40, bilinear 0.125, constant guidance ~0.07
    assert jump(guided) > 2.5 * jump(bilinear) and jump(guided) > 4 * jump(unguided)
    assert float((bilinear[:, 1:] - bilinear[:, :-1]).max()) < jump(guided)  # bilinear's steepest step anywhere


def test_joint_bilateral_hand_computed_values():
    feats = torch.tensor([[[[0.0, 1.0]]]])                # 1 x 1 x 1 x 2; bilinear x2 rows: [0, .25, .75, 1]
    guidance = torch.zeros(1, 3, 2, 4)
    guidance[0, 0, :, 2:] = 0.1                           # already at the output size: pooling keeps it
    out = joint_bilateral_upsample(feats, guidance, 2, radius=1, sigma_spatial=1.0, sigma_range=0.1)[0, 0]
    assert out.shape == (2, 4)
    e = math.exp
    # rows are identical (their Gaussian factor cancels); columns reflect at the borders (-1 -> 1, 4 -> 2).
    # weight = exp(-dcol^2 / 2) * exp(-dg^2 / 0.02), dg = 0.1 across the guidance step -> exp(-0.5)
    expected = [0.5 * e(-0.5) / (1 + 2 * e(-0.5)),                                          # col 0: .25, 0, .25
                (0.25 + 0.75 * e(-1)) / (e(-0.5) + 1 + e(-1)),                              # col 1: 0, .25, .75
                (0.25 * e(-1) + 0.75 + e(-0.5)) / (e(-1) + 1 + e(-0.5)),                    # col 2: .25, .75, 1
                (0.75 * 2 * e(-0.5) + 1) / (1 + 2 * e(-0.5))]                               # col 3: .75, 1, .75
    for row in range(2):
        np.testing.assert_allclose(out[row].numpy(), expected, rtol=1e-6)


def test_joint_bilateral_refuses_bad_input():
    feats, guidance = torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 16, 16)
    for factor in (3, 1, 0):
        with pytest.raises(ValueError, match="power of two"):
            joint_bilateral_upsample(feats, guidance, factor)
    with pytest.raises(ValueError, match="2 images but features have 1"):
        joint_bilateral_upsample(feats, guidance.repeat(2, 1, 1, 1), 2)
    with pytest.raises(ValueError, match="sigma"):
        joint_bilateral_upsample(feats, guidance, 2, sigma_range=0)
    with pytest.raises(ValueError, match="B x C x h x w"):
        joint_bilateral_upsample(feats[0], guidance, 2)
    with pytest.raises(ValueError, match="too small"):
        joint_bilateral_upsample(torch.zeros(1, 2, 1, 1), guidance, 2)
