"""GroundingDINO adapter over transformers' ``GroundingDinoForObjectDetection`` (+ its BERT tokenizer).

Official weights: ``<models_dir>/gdino-swint-ogc/`` in the transformers layout, read with ``local_files_only=True``,
safetensors only, no remote code. Multi-scale deformable attention: transformers 5 decorates the layer with
``use_kernel_forward_from_hub``, which swaps in a hub kernel only when a model is "kernelized" (``use_kernels=True``
and the ``kernels`` package installed). We pass ``use_kernels=False`` and check the result, so the pure-PyTorch
``grid_sample`` forward always runs and nothing is fetched.
Tiny / random models: a seeded ``GroundingDinoConfig`` build and a generated vocab (``tasks.models.tiny_vocab``).
Preprocessing is ours (the official sizes and PIL bilinear resize), not the HF processor; batches hold one
input size only (no padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.models.calls import count_call, count_load
from tasks.models.captions import normalize_caption
from tasks.models.identity import ModelIdentity
from tasks.models.registry import ModelSpec, Preprocess

FULL_VOCAB_SIZE = 30522  # bert-base-uncased


@dataclass
class GroundingOutput:
    """One image's raw detections: Q queries over the caption's T tokens."""

    boxes_cxcywh: np.ndarray  # Q x 4 float32, normalised [0, 1] (pred_boxes)
    token_logits: np.ndarray  # Q x T float32 sigmoid scores for the caption's T tokens
    token_ids: np.ndarray  # T int64, the tokenised caption incl. special tokens


# ------------------------------------------------------------------------------------------------- configs
def tiny_config(spec: ModelSpec, vocab_size: int):
    """A few-hundred-thousand-parameter GroundingDINO: 4-stage Swin (embed 16, depth 1 each), 1-layer BERT (32)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=128,
                      out_indices=[2, 3, 4])  # 3 backbone levels + 1 strided conv level = num_feature_levels 4
    bert = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=2 * spec.arch["max_text_len"])
    return GroundingDinoConfig(
        backbone_config=swin, text_config=bert, d_model=32,  # d_model: multiple of 32 (GroupNorm(32, d_model))
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_n_points=2, decoder_n_points=2, num_feature_levels=4,
        num_queries=spec.arch["num_queries"], max_text_len=spec.arch["max_text_len"], disable_custom_kernels=True)


def full_config(spec: ModelSpec):
    """grounding-dino-tiny's architecture: Swin-T backbone, BERT-base text encoder (the config defaults)."""
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig(num_queries=spec.arch["num_queries"], max_text_len=spec.arch["max_text_len"],
                               disable_custom_kernels=True)


# ------------------------------------------------------------------------------------------------ building
def _check_pure_pytorch(model) -> None:
    """Refuse a model whose deformable attention was swapped for a hub kernel."""
    if getattr(model, "use_kernels", False):
        raise RuntimeError("GroundingDINO was kernelized; anomflow runs the pure-PyTorch deformable attention only")


def build_seeded_grounding_dino(spec: ModelSpec):
    """(model, tokenizer) with seeded random weights; tiny size for tiny specs, full size otherwise."""
    from transformers import GroundingDinoForObjectDetection

    from tasks.models.tiny_vocab import build_tokenizer

    tokenizer = build_tokenizer(None if spec.tiny else FULL_VOCAB_SIZE)
    config = tiny_config(spec, len(tokenizer)) if spec.tiny else full_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = GroundingDinoForObjectDetection(config)
    return model, tokenizer


def load_pretrained_grounding_dino(directory: Path):
    """(model, tokenizer) from a local transformers-layout directory: no hub, no pickles, no remote code, no kernels."""
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(
        str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False, use_kernels=False,
        dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    return model, tokenizer


def build_grounding_dino_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity,
                                 device: str = "cpu") -> "GroundingDinoAdapter":
    """Construct the model the identity describes (random recipe or verified local files); counts one load."""
    if identity.random_weights:
        model, tokenizer = build_seeded_grounding_dino(spec)
    else:
        from tasks.models.weights import ensure_present

        paths = ensure_present(spec, models_dir)
        model, tokenizer = load_pretrained_grounding_dino(paths["config.json"].parent)
    _check_pure_pytorch(model)
    count_load(spec.name)
    return GroundingDinoAdapter(spec, model, tokenizer, identity, device)


# ----------------------------------------------------------------------------------------------- preprocess
def resized_shape(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) of GroundingDINO's input: the shorter side = size, the longer side capped at max_size, aspect kept.

    The official rule (``get_size_with_aspect_ratio`` in GroundingDINO's ``datasets/transforms.py``): when the cap
    binds, the SHORT side is rounded first, ``size = round(max_size * short / long)``, and the long side is derived
    from that rounded size, ``int(size * long / short)``. A 1:2 image gives 666 x 1332 (not 666 x 1333)."""
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess_image(image: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """RGB H x W x 3 uint8 -> 3 x h x w float32: PIL bilinear resize to :func:`resized_shape`, /255, mean/std."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = resized_shape(image.shape[0], image.shape[1], pre.size, pre.max_size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32) / 255.0
    return (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(pre.mean).view(3, 1, 1)) \
        / torch.tensor(pre.std).view(3, 1, 1)


def same_shape_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the tensors grouped by shape, in first-seen order: each group is one unpadded forward.

    The official code runs GroundingDINO on one image at a time. Zero-padding a mixed-size batch to its largest
    image changes the Swin features near the padded border (the pixel mask does not reach the backbone), so
    anomflow batches only inputs of one size; their results equal batch-1 results to float tolerance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


# -------------------------------------------------------------------------------------------------- adapter
class GroundingDinoAdapter:
    """Open-vocabulary box detection for one GroundingDINO model (eval mode, inference_mode forwards)."""

    def __init__(self, spec: ModelSpec, model, tokenizer, identity: ModelIdentity, device: str = "cpu"):
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_text_len: int = model.config.max_text_len

    def tokenize(self, caption: str) -> np.ndarray:
        """T int64 token ids of the normalised caption, [CLS] ... [SEP], truncated to max_text_len."""
        enc = self.tokenizer(normalize_caption(caption), truncation=True, max_length=self.max_text_len)
        return np.asarray(enc["input_ids"], np.int64)

    def detect(self, images: list[np.ndarray], caption: str) -> list[GroundingOutput]:
        """images: RGB H_i x W_i x 3 uint8, all with one caption. One batched forward (one counted call) per
        network input size (:func:`same_shape_groups`: never padded). Returns per image, in order, Q boxes
        (cx, cy, w, h normalised to the image) and Q x T sigmoid token scores."""
        if len(images) == 0:
            return []
        token_ids = self.tokenize(caption)
        tensors = [preprocess_image(image, self.spec.preprocess) for image in images]
        results: list[GroundingOutput | None] = [None] * len(images)
        for group in same_shape_groups(tensors):
            pixels = torch.stack([tensors[i] for i in group]).to(self.device)
            b, t = len(group), len(token_ids)
            ids = torch.as_tensor(token_ids, device=self.device)[None].expand(b, t).contiguous()
            with torch.inference_mode():
                out = self.model(pixel_values=pixels, pixel_mask=torch.ones_like(pixels[:, 0], dtype=torch.int64),
                                 input_ids=ids, attention_mask=torch.ones_like(ids),
                                 token_type_ids=torch.zeros_like(ids))
            count_call(self.spec.name)
            scores = out.logits[..., :t].sigmoid().float().cpu().numpy()
            boxes = out.pred_boxes.float().cpu().numpy()
            for row, i in enumerate(group):
                results[i] = GroundingOutput(boxes_cxcywh=boxes[row], token_logits=scores[row],
                                             token_ids=token_ids.copy())
        return results

    def phrase(self, token_ids: np.ndarray, selected: np.ndarray) -> str:
        """Words of the selected tokens (bool mask over T): special tokens and '.' dropped, '##' wordpieces merged
        onto the previous piece, words joined by spaces (like GroundingDINO's get_phrases_from_posmap)."""
        ids = np.asarray(token_ids).reshape(-1)
        sel = np.asarray(selected, bool).reshape(-1)
        if ids.shape != sel.shape:
            raise ValueError(f"token_ids {ids.shape} and selected {sel.shape} differ")
        special = set(self.tokenizer.all_special_ids)
        words: list[str] = []
        for tok_id, piece in zip(ids[sel].tolist(), self.tokenizer.convert_ids_to_tokens(ids[sel].tolist())):
            if tok_id in special or piece == ".":
                continue
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece.removeprefix("##"))
        return " ".join(words)
