"""Frozen model specs: architecture, weight files (with sha256 and source) and preprocessing.

The registry is a plain dict built here, explicitly; nothing registers itself on import.
Files of a spec live in ``<models_dir>/<spec.name>/<file.filename>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# IDEA-Research's own port of groundingdino_swint_ogc.pth to the transformers layout, pinned revision.
_GDINO_URL = "https://huggingface.co/IDEA-Research/grounding-dino-tiny/resolve/a2bb814dd30d776dcf7e30523b00659f4f141c71/"


@dataclass(frozen=True)
class WeightFile:
    """One file a model needs. sha256 None means "not pinned": verified against the hash
    recorded when it was first imported or pulled (see tasks.models.weights)."""

    filename: str
    sha256: str | None
    url: str | None
    size: int | None = None


@dataclass(frozen=True)
class Preprocess:
    """size: SAM longest side / GroundingDINO shortest side; max_size: GroundingDINO longest side cap.
    mean/std on the scale the family uses (0-255 for SAM, 0-1 for ImageNet-normalised models)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "sam" | "grounding_dino" | "wrn50"
    arch: dict[str, Any] = field(hash=False)
    files: tuple[WeightFile, ...]
    preprocess: Preprocess
    tiny: bool = False
    seed: int = 0
    source: str = ""

    def file_path(self, models_dir: str | os.PathLike, filename: str) -> Path:
        return Path(models_dir) / self.name / filename


def default_models_dir() -> Path:
    """``$ANOMFLOW_MODELS_DIR``, else ``~/.cache/anomflow/models``."""
    env = os.environ.get("ANOMFLOW_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "anomflow" / "models"


def _sam(name: str, ckpt: str, sha: str, size: int, dim: int, depth: int, heads: int, glob: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="sam",
        arch=dict(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
                  encoder_global_attn_indexes=glob, image_size=1024, patch_size=16,
                  prompt_embed_dim=256, decoder_mlp_dim=2048, decoder_heads=8, decoder_depth=2),
        files=(WeightFile(ckpt, sha, _SAM_URL + ckpt, size),),
        preprocess=Preprocess(1024, SAM_PIXEL_MEAN, SAM_PIXEL_STD),
        source="Meta AI, segment-anything release",
    )


_GDINO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.txt")

MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _sam("sam-vit-b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
             375042383, 768, 12, 12, (2, 5, 8, 11)),
        _sam("sam-vit-l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
             1249524607, 1024, 24, 16, (5, 11, 17, 23)),
        _sam("sam-vit-h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
             2564550879, 1280, 32, 16, (7, 15, 23, 31)),
        ModelSpec(
            name="tiny-sam",
            family="sam",
            arch=dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                      image_size=256, patch_size=16, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2,
                      decoder_depth=2),
            files=(),
            preprocess=Preprocess(256, SAM_PIXEL_MEAN, SAM_PIXEL_STD),
            tiny=True,
            seed=0,
            source="seeded random weights (test stand-in for sam-vit-*)",
        ),
        ModelSpec(
            name="gdino-swint-ogc",
            family="grounding_dino",
            arch=dict(hf_layout=True, backbone="swin-tiny", text_encoder="bert-base-uncased", num_queries=900,
                      max_text_len=256),
            files=tuple(WeightFile(f, None, _GDINO_URL + f, 689359096 if f == "model.safetensors" else None)
                        for f in _GDINO_FILES),
            preprocess=Preprocess(800, IMAGENET_MEAN, IMAGENET_STD, max_size=1333),
            source="IDEA-Research/grounding-dino-tiny (Swin-T OGC, transformers layout)",
        ),
        ModelSpec(
            name="tiny-gdino",
            family="grounding_dino",
            arch=dict(hf_layout=True, backbone="swin-tiny-test", text_encoder="bert-tiny-test", num_queries=30,
                      max_text_len=64),
            files=(),
            preprocess=Preprocess(128, IMAGENET_MEAN, IMAGENET_STD, max_size=192),
            tiny=True,
            seed=0,
            source="seeded random weights (test stand-in for gdino-swint-ogc)",
        ),
    )
}

_WRN50_ARCH = dict(depth=50, width_factor=2, layers=(3, 4, 6, 3), feature_layers=(1, 2, 3),
                   feature_channels=(256, 512, 1024))

MODEL_SPECS.update({
    spec.name: spec
    for spec in (
        ModelSpec(
            name="wrn50-2",
            family="wrn50",
            arch=dict(_WRN50_ARCH),
            # timm's default pretrained tag of wide_resnet50_2 since timm 0.3.0 (checked up to 1.0.31), hence what the
            # official SAA+ timm.create_model("wide_resnet50_2", pretrained=True) loads. URL from timm's pretrained cfg
            # (timm >= 0.9 prefers the hf-hub copy timm/wide_resnet50_2.racm_in1k). Same keys and shapes as
            # torchvision's file. Not pinned: verified against the hash recorded on first import or pull.
            files=(WeightFile("wide_resnet50_racm-8234f177.pth", None,
                              "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
                              "wide_resnet50_racm-8234f177.pth", None),),
            preprocess=Preprocess(256, IMAGENET_MEAN, IMAGENET_STD),
            source="timm wide_resnet50_2.racm_in1k (timm's default tag, what the official "
                   "timm.create_model(..., pretrained=True) loads)",
        ),
        ModelSpec(
            name="wrn50-2-tv",
            family="wrn50",
            arch=dict(_WRN50_ARCH),
            # torchvision's IMAGENET1K_V1 file; its name carries the first 8 hex digits of its sha256.
            files=(WeightFile("wide_resnet50_2-95faca4d.pth", None,
                              "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth", 275909051),),
            preprocess=Preprocess(256, IMAGENET_MEAN, IMAGENET_STD),
            source="torchvision ImageNet weights (timm's wide_resnet50_2.tv_in1k)",
        ),
        ModelSpec(
            name="tiny-wrn50",
            family="wrn50",
            arch=dict(depth=10, width_factor=1, layers=(1, 1, 1, 1), feature_layers=(1, 2, 3),
                      feature_channels=(64, 128, 256)),
            files=(),
            preprocess=Preprocess(256, IMAGENET_MEAN, IMAGENET_STD),
            tiny=True,
            seed=0,
            source="seeded random weights (test stand-in for wrn50-2 / wrn50-2-tv)",
        ),
    )
})

# Official model -> its tiny twin, used when weights are absent and a fallback was allowed.
TINY_TWIN = {"sam-vit-b": "tiny-sam", "sam-vit-l": "tiny-sam", "sam-vit-h": "tiny-sam",
             "gdino-swint-ogc": "tiny-gdino", "wrn50-2": "tiny-wrn50", "wrn50-2-tv": "tiny-wrn50"}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_SPECS))
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None
