"""GroundingDINO adapter over transformers' ``GroundingDinoForObjectDetection`` (+ its BERT tokenizer).

Official weights: ``<models_dir>/gdino-swint-ogc/`` in the transformers layout, read with ``local_files_only=True``,
safetensors only, no remote code. Multi-scale deformable attention: transformers 5 decorates the layer with
``use_kernel_forward_from_hub``, which swaps in a hub kernel only when a model is "kernelized" (``use_kernels=True``
and the ``kernels`` package installed). We pass ``use_kernels=False`` and check the result, so the pure-PyTorch
``grid_sample`` forward always runs and nothing is fetched.
Tiny / random models: a seeded ``GroundingDinoConfig`` build and a generated vocab (``tasks.models.tiny_vocab``).
Preprocessing is ours (same sizes and PIL bilinear resize as the official pipeline), not the HF processor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.models.calls import count_call, count_load
from tasks.models.loading import ModelIdentity
from tasks.models.registry import ModelSpec, Preprocess

FULL_VOCAB_SIZE = 30522  # bert-base-uncased


@dataclass
class GroundingOutput:
    """One image's raw detections: Q queries over the caption's T tokens."""

    boxes_cxcywh: np.ndarray  # Q x 4 float32, normalised [0, 1] (pred_boxes)
    token_logits: np.ndarray  # Q x T float32 sigmoid scores for the caption's T tokens
    token_ids: np.ndarray  # T int64, the tokenised caption incl. special tokens


def normalize_caption(caption: str) -> str:
    """Lower-case, strip, end with '.' (the form GroundingDINO was trained on)."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."


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
    """(h, w) with the shorter side = size and the longer <= max_size, aspect kept (DETR / GroundingDINO rule)."""
    raw = None
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            raw = max_size * short / long
            size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    scale = raw if raw is not None else size
    if width < height:
        return int(scale * height / width), size
    return size, int(scale * width / height)


def preprocess_images(images: list[np.ndarray], pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB H_i x W_i x 3 uint8 -> pixel_values B x 3 x H x W float32 (resized, /255, mean/std, zero-padded
    bottom/right to the batch max) and pixel_mask B x H x W int64 (1 = real pixel)."""
    tensors = []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = resized_shape(image.shape[0], image.shape[1], pre.size, pre.max_size)
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32) / 255.0
        x = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(pre.mean).view(3, 1, 1)) \
            / torch.tensor(pre.std).view(3, 1, 1)
        tensors.append(x)
    height = max(t.shape[1] for t in tensors)
    width = max(t.shape[2] for t in tensors)
    pixels = torch.zeros(len(tensors), 3, height, width)
    mask = torch.zeros(len(tensors), height, width, dtype=torch.int64)
    for i, t in enumerate(tensors):
        pixels[i, :, : t.shape[1], : t.shape[2]] = t
        mask[i, : t.shape[1], : t.shape[2]] = 1
    return pixels, mask


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
        """images: RGB H_i x W_i x 3 uint8; one batched forward (one counted call) for all of them with the same
        caption. Returns per image Q boxes (cx, cy, w, h normalised to the image, padding excluded) and Q x T
        sigmoid token scores."""
        if len(images) == 0:
            return []
        token_ids = self.tokenize(caption)
        pixels, mask = preprocess_images(images, self.spec.preprocess)
        b, t = len(images), len(token_ids)
        ids = torch.as_tensor(token_ids, device=self.device)[None].expand(b, t).contiguous()
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device), pixel_mask=mask.to(self.device), input_ids=ids,
                             attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
        count_call(self.spec.name)
        scores = out.logits[..., :t].sigmoid().float().cpu().numpy()
        boxes = out.pred_boxes.float().cpu().numpy()
        return [GroundingOutput(boxes_cxcywh=boxes[i], token_logits=scores[i], token_ids=token_ids.copy())
                for i in range(b)]

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
