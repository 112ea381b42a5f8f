"""WideResNet-50-2 weights: the registry pins timm's default tag (what the official SAA+ code loads) under ``wrn50-2``
and torchvision's file under ``wrn50-2-tv``; anomflow's network has timm's keys and shapes (either file loads
strictly), and with the same weights its feature path equals the official one: timm ``features_only`` backbone
(``out_indices=(1, 2, 3)``) followed by ``ModelINet.forward``'s post-processing (SAA/modelinet.py)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import ResNet as TimmResNet

from tasks.models import registry
from tasks.models.loading import model_identity
from tasks.models.registry import TINY_TWIN, get_spec
from tasks.models.weights import WeightsMissingError
from tasks.models.wrn50 import Wrn50Adapter, build_checkpoint_wrn50, build_wrn50_model

pytestmark = pytest.mark.usefixtures("fresh_models")

RACM_FILE = "wide_resnet50_racm-8234f177.pth"
TV_FILE = "wide_resnet50_2-95faca4d.pth"


def _randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    """timm zero-inits the last BN of every block (the residual branch would vanish) and all BN start as identity:
    give every BN random affine params and running stats so the comparison exercises every layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _official_postprocess(features: list[torch.Tensor]) -> torch.Tensor:
    """ModelINet.forward after ``features = self.backbone(x)`` (pool_last=False): layers 2.. resized to layer 1's
    grid with F.interpolate's default (nearest), concatenated on channels, F.normalize(dim=1)."""
    features = list(features)
    size_0 = features[0].shape[2:]
    for i in range(1, len(features)):
        features[i] = F.interpolate(features[i], size_0)
    features = torch.cat(features, dim=1)
    return F.normalize(features, dim=1)


# ------------------------------------------------------------------------------------------------------ registry
def test_registry_files_and_twins():
    main, tv = get_spec("wrn50-2"), get_spec("wrn50-2-tv")
    assert [f.filename for f in main.files] == [RACM_FILE]
    assert [f.filename for f in tv.files] == [TV_FILE]
    assert main.arch == tv.arch and main.family == tv.family == "wrn50"
    assert main.preprocess == tv.preprocess and not main.tiny and not tv.tiny
    assert TINY_TWIN["wrn50-2"] == TINY_TWIN["wrn50-2-tv"] == "tiny-wrn50"
    assert "racm_in1k" in main.source and "tv_in1k" in tv.source
    # the url is the one of timm's default pretrained cfg for the architecture
    cfg = timm.models.get_pretrained_cfg("wide_resnet50_2")
    assert cfg.tag == "racm_in1k" and cfg.url == main.files[0].url and cfg.url.endswith("/" + RACM_FILE)
    assert timm.models.get_pretrained_cfg("wide_resnet50_2.tv_in1k").url == tv.files[0].url
    assert tv.files[0].url.endswith("/" + TV_FILE)


def test_missing_weights_name_the_pull_command(tmp_path):
    for name, filename in (("wrn50-2", RACM_FILE), ("wrn50-2-tv", TV_FILE)):
        with pytest.raises(WeightsMissingError, match=f"anomflow models pull {name}") as err:
            model_identity(name, tmp_path)
        assert err.value.filename == filename


# ------------------------------------------------------------------------------------------------- architecture
def test_official_architecture_matches_timm():
    """Keys and shapes equal timm's wide_resnet50_2 (so timm's racm_in1k / tv_in1k files load strictly)."""
    with torch.device("meta"):
        ours = build_wrn50_model(get_spec("wrn50-2")).state_dict()
        ref = timm.create_model("wide_resnet50_2", pretrained=False).state_dict()
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref), [k for k in ref if ours[k].shape != ref[k].shape]


@pytest.fixture(scope="module")
def timm_wrn50():
    """A full-size timm wide_resnet50_2 with seeded random weights (BatchNorm randomised), eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = timm.create_model("wide_resnet50_2", pretrained=False).eval()
    _randomise_batchnorm(model, torch.Generator().manual_seed(8))
    return model


def test_same_weights_same_features_as_official(tmp_path, timm_wrn50):
    """timm's state_dict saved as a file loads strictly through build_checkpoint_wrn50; Wrn50Adapter._forward then
    equals the official path (timm features_only backbone, ModelINet post-processing)."""
    state = timm_wrn50.state_dict()
    path = tmp_path / RACM_FILE
    torch.save(state, path)
    spec = get_spec("wrn50-2")
    ours = build_checkpoint_wrn50(spec, path)
    path.unlink()  # 270 MB; pytest keeps the last tmp dirs around
    loaded = ours.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    adapter = Wrn50Adapter(spec, ours, identity=None)

    with torch.device("meta"):  # the official backbone, given the same tensors
        backbone = timm.create_model("wide_resnet50_2", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    backbone.load_state_dict({k: state[k] for k in backbone.state_dict()}, strict=True, assign=True)
    backbone.eval()
    assert backbone.feature_info.channels() == list(spec.arch["feature_channels"])

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        official = _official_postprocess(backbone(x))
        mine = adapter._forward(x)
    assert mine.shape == official.shape == (1, 1792, 16, 16)
    torch.testing.assert_close(mine, official, rtol=1e-5, atol=1e-5)
    # not a degenerate comparison: the unit feature vectors differ from location to location
    assert (official[0, :, 0, 0] - official[0, :, 9, 5]).norm() > 0.1


def test_timm_style_checkpoint_loads_tiny_spec(tmp_path):
    """A timm ResNet(BasicBlock, [1, 1, 1, 1]) state_dict (timm's key layout) loads strictly into the tiny spec."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        timm_tiny = TimmResNet(TimmBasicBlock, [1, 1, 1, 1]).eval()
    _randomise_batchnorm(timm_tiny, torch.Generator().manual_seed(4))
    state = timm_tiny.state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    spec = get_spec("tiny-wrn50")
    ours = build_checkpoint_wrn50(spec, path)
    loaded = ours.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        t = timm_tiny  # timm's ResNet.forward_features, stopped after layer3
        h = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        f1 = t.layer1(h)
        f2 = t.layer2(f1)
        f3 = t.layer3(f2)
        official = _official_postprocess([f1, f2, f3])
        mine = Wrn50Adapter(spec, ours, identity=None)._forward(x)
    torch.testing.assert_close(mine, official, rtol=1e-5, atol=1e-5)


def test_registry_specs_are_distinct_objects():
    assert registry.MODEL_SPECS["wrn50-2"].arch is not registry.MODEL_SPECS["wrn50-2-tv"].arch
