"""Architectures apart from their weight tags (as open_clip keeps model configs apart from pretrained tags).

* :class:`Architecture`: the network shape (``arch``), family, preprocessing, tiny twin and seed. Seeded-random
  weights (tiny architectures, or ``--random-weights``) belong to the architecture.
* :class:`WeightTag`: one release of weights for an architecture (files with sha256 and source), registered
  under a model name. The default tag's name is the architecture's own name (``wrn50-2`` = ``wrn50-2:racm_in1k``).
* :class:`ModelSpec`: what a model name resolves to, (architecture, tag) flattened into one frozen record; the
  adapters, loaders and weight tools read only this.

Names: every registered name (``MODEL_SPECS``), or ``architecture:tag`` (``wrn50-2:tv_in1k``). The tables are
built here, explicitly; nothing registers itself on import. Files of a model live in
``<models_dir>/<spec.name>/<file.filename>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN, used by every CLIP tag here
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# IDEA-Research's own port of groundingdino_swint_ogc.pth to the transformers layout, pinned revision.
_GDINO_URL = "https://huggingface.co/IDEA-Research/grounding-dino-tiny/resolve/a2bb814dd30d776dcf7e30523b00659f4f141c71/"
_TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
# timm's hf_hub_id for vit_small_patch14_dinov2.lvd142m (timm layout; the pretrained cfg's url is Meta's original
# layout, which timm converts on load), pinned revision.
_DINOV2_URL = "https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m/resolve/cace07adb9220de26eb51226ecbef6d04d35defe/"
_OPEN_CLIP_URL = "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
# FeatUp's hubconf.py (use_norm=True: no "no_norm/" folder); the file is not versioned, so it is not pinned.
_FEATUP_URL = "https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/"


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
    """size: SAM longest side / GroundingDINO shortest side / square side (WRN, DINOv2, CLIP); max_size:
    GroundingDINO longest side cap. mean/std on the scale the family uses (0-255 for SAM, 0-1 otherwise)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_size: int | None = None


@dataclass(frozen=True)
class Architecture:
    """A network shape without weights. ``tiny``: a small test stand-in, always seeded-random (no tags)."""

    name: str
    family: str  # "sam" | "grounding_dino" | "wrn50" | "dinov2" | "clip" | "featup"
    arch: dict[str, Any] = field(hash=False)
    preprocess: Preprocess
    tiny_twin: str | None = None  # the tiny architecture that stands in when official weights are absent
    tiny: bool = False
    seed: int = 0
    source: str = ""  # for tiny architectures: what they stand in for


@dataclass(frozen=True)
class WeightTag:
    """One release of weights for ``architecture``, registered under model ``name``."""

    architecture: str
    tag: str
    name: str
    files: tuple[WeightFile, ...]
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: (architecture, tag) flattened. ``tag`` None: a tiny architecture (seeded weights only)."""

    name: str
    family: str
    arch: dict[str, Any] = field(hash=False)
    files: tuple[WeightFile, ...]
    preprocess: Preprocess
    tiny: bool = False
    seed: int = 0
    source: str = ""
    architecture: str = ""  # "" -> same as name
    tag: str | None = None

    def __post_init__(self):
        if not self.architecture:
            object.__setattr__(self, "architecture", self.name)

    def file_path(self, models_dir: str | os.PathLike, filename: str) -> Path:
        return Path(models_dir) / self.name / filename


def default_models_dir() -> Path:
    """``$ANOMFLOW_MODELS_DIR``, else ``~/.cache/anomflow/models``."""
    env = os.environ.get("ANOMFLOW_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "anomflow" / "models"


# ------------------------------------------------------------------------------------------------- architectures
def _sam(name: str, dim: int, depth: int, heads: int, glob: tuple[int, ...]) -> Architecture:
    return Architecture(
        name=name, family="sam",
        arch=dict(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
                  encoder_global_attn_indexes=glob, image_size=1024, patch_size=16,
                  prompt_embed_dim=256, decoder_mlp_dim=2048, decoder_heads=8, decoder_depth=2),
        preprocess=Preprocess(1024, SAM_PIXEL_MEAN, SAM_PIXEL_STD), tiny_twin="tiny-sam")


def _tiny(name: str, family: str, arch: dict[str, Any], preprocess: Preprocess, stands_in_for: str) -> Architecture:
    return Architecture(name=name, family=family, arch=arch, preprocess=preprocess, tiny=True, seed=0,
                        source=f"seeded random weights (test stand-in for {stands_in_for})")


_WRN50_ARCH = dict(depth=50, width_factor=2, layers=(3, 4, 6, 3), feature_layers=(1, 2, 3),
                   feature_channels=(256, 512, 1024))
# timm's vit_small_patch14_dinov2 (img_size from its pretrained cfg, num_classes 0: no head)
_DINOV2_S14_ARCH = dict(img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                        init_values=1e-5)
# open_clip model configs (model_configs/<name>.json); quick_gelu as the weights were trained (OpenAI: QuickGELU).
_CLIP_L14_336_ARCH = dict(
    embed_dim=768, quick_gelu=True,
    vision_cfg=dict(image_size=336, layers=24, width=1024, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12))
_CLIP_B16_PLUS_240_ARCH = dict(
    embed_dim=640, quick_gelu=False,
    vision_cfg=dict(image_size=240, layers=12, width=896, patch_size=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=640, heads=10, layers=12))
# FeatUp's JBUStack(384) for DINOv2 ViT-S/14 (featup/upsamplers.py): 4 x2 stages, radius 3, key dim 32, RGB guidance;
# patch_size: the backbone's, to size the guidance (grid x 14 pixels).
_FEATUP_JBU_DINOV2_ARCH = dict(feat_dim=384, key_dim=32, radius=3, stages=4, guidance_dim=3, patch_size=14)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _sam("sam-vit-b", 768, 12, 12, (2, 5, 8, 11)),
    _sam("sam-vit-l", 1024, 24, 16, (5, 11, 17, 23)),
    _sam("sam-vit-h", 1280, 32, 16, (7, 15, 23, 31)),
    _tiny("tiny-sam", "sam",
          dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
               image_size=256, patch_size=16, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2,
               decoder_depth=2),
          Preprocess(256, SAM_PIXEL_MEAN, SAM_PIXEL_STD), "sam-vit-*"),
    # named after its only weights (kept so the seeded-random recipe, hence the identity, stays what it was)
    Architecture("gdino-swint-ogc", "grounding_dino",
                 dict(hf_layout=True, backbone="swin-tiny", text_encoder="bert-base-uncased", num_queries=900,
                      max_text_len=256),
                 Preprocess(800, IMAGENET_MEAN, IMAGENET_STD, max_size=1333), tiny_twin="tiny-gdino"),
    _tiny("tiny-gdino", "grounding_dino",
          dict(hf_layout=True, backbone="swin-tiny-test", text_encoder="bert-tiny-test", num_queries=30,
               max_text_len=64),
          Preprocess(128, IMAGENET_MEAN, IMAGENET_STD, max_size=192), "gdino-swint-ogc"),
    Architecture("wrn50-2", "wrn50", _WRN50_ARCH, Preprocess(256, IMAGENET_MEAN, IMAGENET_STD),
                 tiny_twin="tiny-wrn50"),
    _tiny("tiny-wrn50", "wrn50",
          dict(depth=10, width_factor=1, layers=(1, 1, 1, 1), feature_layers=(1, 2, 3),
               feature_channels=(64, 128, 256)),
          Preprocess(256, IMAGENET_MEAN, IMAGENET_STD), "wrn50-2 / wrn50-2-tv"),
    Architecture("dinov2-vit-s-14", "dinov2", _DINOV2_S14_ARCH, Preprocess(518, IMAGENET_MEAN, IMAGENET_STD),
                 tiny_twin="tiny-dinov2"),
    _tiny("tiny-dinov2", "dinov2",
          dict(img_size=112, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, init_values=1e-5),
          Preprocess(112, IMAGENET_MEAN, IMAGENET_STD), "dinov2-vits14"),
    Architecture("clip-vit-l-14-336", "clip", _CLIP_L14_336_ARCH, Preprocess(336, CLIP_MEAN, CLIP_STD),
                 tiny_twin="tiny-clip"),
    Architecture("clip-vit-b-16-plus-240", "clip", _CLIP_B16_PLUS_240_ARCH, Preprocess(240, CLIP_MEAN, CLIP_STD),
                 tiny_twin="tiny-clip"),
    _tiny("tiny-clip", "clip",
          dict(embed_dim=32, quick_gelu=False,
               vision_cfg=dict(image_size=64, layers=2, width=32, head_width=16, patch_size=16),
               text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)),
          Preprocess(64, CLIP_MEAN, CLIP_STD), "clip-vit-*"),
    Architecture("featup-jbu-dinov2", "featup", _FEATUP_JBU_DINOV2_ARCH, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD),
                 tiny_twin="tiny-featup-jbu"),
    _tiny("tiny-featup-jbu", "featup",
          dict(feat_dim=32, key_dim=8, radius=3, stages=4, guidance_dim=3, patch_size=14),
          Preprocess(112, IMAGENET_MEAN, IMAGENET_STD), "featup-jbu-dinov2 (sized for tiny-dinov2)"),
)}


# --------------------------------------------------------------------------------------------------- weight tags
def _sam_tag(arch: str, ckpt: str, sha: str, size: int) -> WeightTag:
    return WeightTag(arch, "sa1b", arch, (WeightFile(ckpt, sha, _SAM_URL + ckpt, size),),
                     "Meta AI, segment-anything release")


_GDINO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.txt")

WEIGHT_TAGS: tuple[WeightTag, ...] = (
    _sam_tag("sam-vit-b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
             375042383),
    _sam_tag("sam-vit-l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
             1249524607),
    _sam_tag("sam-vit-h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
             2564550879),
    WeightTag("gdino-swint-ogc", "ogc_hf", "gdino-swint-ogc",
              tuple(WeightFile(f, None, _GDINO_URL + f, 689359096 if f == "model.safetensors" else None)
                    for f in _GDINO_FILES),
              "IDEA-Research/grounding-dino-tiny (Swin-T OGC, transformers layout)"),
    # timm's default pretrained tag of wide_resnet50_2 since timm 0.3.0 (checked up to 1.0.31), hence what the
    # official SAA+ timm.create_model("wide_resnet50_2", pretrained=True) loads. URL from timm's pretrained cfg
    # (timm >= 0.9 prefers the hf-hub copy timm/wide_resnet50_2.racm_in1k). Same keys and shapes as torchvision's
    # file. Not pinned: verified against the hash recorded on first import or pull.
    WeightTag("wrn50-2", "racm_in1k", "wrn50-2",
              (WeightFile("wide_resnet50_racm-8234f177.pth", None, _TIMM_URL + "wide_resnet50_racm-8234f177.pth"),),
              "timm wide_resnet50_2.racm_in1k (timm's default tag, what the official "
              "timm.create_model(..., pretrained=True) loads)"),
    # torchvision's IMAGENET1K_V1 file; its name carries the first 8 hex digits of its sha256.
    WeightTag("wrn50-2", "tv_in1k", "wrn50-2-tv",
              (WeightFile("wide_resnet50_2-95faca4d.pth", None,
                          "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth", 275909051),),
              "torchvision ImageNet weights (timm's wide_resnet50_2.tv_in1k)"),
    WeightTag("dinov2-vit-s-14", "lvd142m", "dinov2-vits14",
              (WeightFile("model.safetensors", None, _DINOV2_URL + "model.safetensors"),),
              "timm vit_small_patch14_dinov2.lvd142m (Meta's DINOv2 ViT-S/14 in timm's layout)"),
    # open_clip 3.3 prefers the hf-hub copy timm/vit_large_patch14_clip_336.openai (its url is OpenAI's TorchScript
    # archive, which only torch.jit can read). The tag was trained with QuickGELU (see the architecture).
    WeightTag("clip-vit-l-14-336", "openai", "clip-vit-l-14-336",
              (WeightFile("open_clip_model.safetensors", None,
                          "https://huggingface.co/timm/vit_large_patch14_clip_336.openai/resolve/main/"
                          "open_clip_model.safetensors"),),
              "OpenAI CLIP ViT-L/14@336px (open_clip ViT-L-14-336, tag openai; open_clip layout)"),
    # open_clip's release files; the 8 hex digits in the names are sha256 prefixes (open_clip checks them).
    # Not the hf-hub copy: open_clip 3.3's cfg points BOTH tags at timm/...laion400m_e31, so only the url is e32.
    WeightTag("clip-vit-b-16-plus-240", "laion400m_e31", "clip-vit-b-16-plus-240",
              (WeightFile("vit_b_16_plus_240-laion400m_e31-8fb26589.pt", None,
                          _OPEN_CLIP_URL + "vit_b_16_plus_240-laion400m_e31-8fb26589.pt"),),
              "open_clip ViT-B-16-plus-240, LAION-400M epoch 31 (anomalib's WinCLIP weights)"),
    WeightTag("clip-vit-b-16-plus-240", "laion400m_e32", "clip-vit-b-16-plus-240-e32",
              (WeightFile("vit_b_16_plus_240-laion400m_e32-699c4b84.pt", None,
                          _OPEN_CLIP_URL + "vit_b_16_plus_240-laion400m_e32-699c4b84.pt"),),
              "open_clip ViT-B-16-plus-240, LAION-400M epoch 32"),
    # torch.hub mhamilton723/FeatUp "dinov2" (use_norm=True); a Lightning checkpoint, only its upsampler.* is read.
    WeightTag("featup-jbu-dinov2", "cocostuff", "featup-jbu-dinov2",
              (WeightFile("dinov2_jbu_stack_cocostuff.ckpt", None, _FEATUP_URL + "dinov2_jbu_stack_cocostuff.ckpt"),),
              "FeatUp JBU stack for DINOv2 ViT-S/14 with ChannelNorm, trained on COCO-Stuff "
              "(mhamilton723/FeatUp, torch.hub dinov2, use_norm=True)"),
)


# ---------------------------------------------------------------------------------------------------- resolution
def compose(architecture: Architecture, tag: WeightTag | None) -> ModelSpec:
    """The spec of ``architecture`` with ``tag``'s weights (None: the architecture's seeded weights, no files)."""
    if tag is not None and tag.architecture != architecture.name:
        raise ValueError(f"tag {tag.tag!r} belongs to {tag.architecture!r}, not {architecture.name!r}")
    return ModelSpec(
        name=tag.name if tag else architecture.name, family=architecture.family, arch=dict(architecture.arch),
        files=tag.files if tag else (), preprocess=architecture.preprocess, tiny=architecture.tiny,
        seed=architecture.seed, source=tag.source if tag else architecture.source,
        architecture=architecture.name, tag=tag.tag if tag else None)


def _build_specs() -> dict[str, ModelSpec]:
    specs = {a.name: compose(a, None) for a in ARCHITECTURES.values() if a.tiny}
    for tag in WEIGHT_TAGS:
        arch = ARCHITECTURES[tag.architecture]
        if arch.tiny or tag.name in specs:
            raise ValueError(f"weight tag {tag.architecture}:{tag.tag}: tiny architecture or duplicate name")
        specs[tag.name] = compose(arch, tag)
    return specs


MODEL_SPECS: dict[str, ModelSpec] = _build_specs()

# Official model -> its tiny twin, used when weights are absent and a fallback was allowed.
TINY_TWIN: dict[str, str] = {name: ARCHITECTURES[spec.architecture].tiny_twin for name, spec in MODEL_SPECS.items()
                             if spec.architecture in ARCHITECTURES and ARCHITECTURES[spec.architecture].tiny_twin}


def tags_of(architecture: str) -> dict[str, str]:
    """``{tag: model name}`` of the registered models of ``architecture``."""
    return {s.tag: s.name for s in MODEL_SPECS.values() if s.architecture == architecture and s.tag is not None}


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered name or of ``architecture:tag``; KeyError listing what exists otherwise."""
    spec = MODEL_SPECS.get(name)
    if spec is not None:
        return spec
    arch, sep, tag = name.partition(":")
    if sep:
        tags = tags_of(arch)
        if tag in tags:
            return MODEL_SPECS[tags[tag]]
        if tags:
            raise KeyError(f"unknown tag {tag!r} for architecture {arch!r}; its tags: {', '.join(sorted(tags))}")
    known = ", ".join(sorted(MODEL_SPECS))
    raise KeyError(f"unknown model {name!r}; registered models: {known} (or ARCHITECTURE:TAG)") from None


def tiny_twin(name: str) -> str | None:
    """The tiny stand-in of an official model name (any accepted form), None for tiny or twinless models."""
    spec = get_spec(name)
    arch = ARCHITECTURES.get(spec.architecture)
    return None if spec.tiny or arch is None else arch.tiny_twin


def random_spec(spec: ModelSpec) -> ModelSpec:
    """The spec seeded-random weights are built from: the architecture's, whatever the tag (no files, no tag)."""
    if spec.tag is None and not spec.files:
        return spec
    arch = ARCHITECTURES.get(spec.architecture)
    if arch is not None and (arch.family, arch.arch, arch.seed, arch.tiny) == (spec.family, spec.arch, spec.seed,
                                                                                spec.tiny):
        return compose(arch, None)
    # a spec registered outside the tables (tests): its own name stands for its architecture
    return replace(spec, files=(), tag=None)
