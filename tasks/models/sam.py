"""SAM adapter: build (tiny / official checkpoint / full-size seeded random), embed images, decode box/point prompts.

Built from segment_anything's modeling classes with the dimensions of ``spec.arch``; at the official sizes the
state_dict keys and shapes equal the released checkpoints (same recipe as segment_anything's ``_build_sam``).
Checkpoints are read with safetensors or ``torch.load(weights_only=True)`` only; ``build_sam*(checkpoint=...)``
is never used (it unpickles without ``weights_only``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from tasks.models.calls import count_call, count_load
from tasks.models.checkpoint import read_state_dict
from tasks.models.identity import ModelIdentity
from tasks.models.registry import ModelSpec

_Points = tuple[torch.Tensor, torch.Tensor]  # coords N x P x 2, labels N x P


# ------------------------------------------------------------------------------------------------- building
def build_sam_model(spec: ModelSpec) -> Sam:
    """An uninitialised-by-checkpoint ``Sam`` with ``spec.arch`` dimensions (weights from the current RNG / device)."""
    a = spec.arch
    grid = a["image_size"] // a["patch_size"]
    dim = a["prompt_embed_dim"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"], embed_dim=a["encoder_embed_dim"], img_size=a["image_size"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a["encoder_num_heads"],
            patch_size=a["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(a["encoder_global_attn_indexes"]), window_size=a.get("window_size", 14),
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(a["image_size"], a["image_size"]), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a["decoder_depth"], embedding_dim=dim, mlp_dim=a["decoder_mlp_dim"],
                                          num_heads=a["decoder_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=a.get("iou_head_hidden_dim", 256),
        ),
        pixel_mean=list(spec.preprocess.mean),
        pixel_std=list(spec.preprocess.std),
    )


def build_seeded_sam(spec: ModelSpec) -> Sam:
    """Seeded random weights (``torch.manual_seed(spec.seed)`` in a forked RNG, the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_sam_model(spec)


def build_checkpoint_sam(spec: ModelSpec, checkpoint: Path) -> Sam:
    """The architecture on the meta device, then the checkpoint assigned strictly (keys and shapes must match)."""
    with torch.device("meta"):
        sam = build_sam_model(spec)
    sam.load_state_dict(read_state_dict(checkpoint), strict=True, assign=True)
    # pixel_mean/std are non-persistent buffers: not in checkpoints, still on meta
    sam.register_buffer("pixel_mean", torch.tensor(spec.preprocess.mean).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor(spec.preprocess.std).view(-1, 1, 1), False)
    return sam


def build_sam_adapter(spec: ModelSpec, models_dir: Path, identity: ModelIdentity, device: str = "cpu") -> "SamAdapter":
    """Construct the model the identity describes (random recipe or verified local checkpoint); counts one load."""
    if identity.random_weights:
        sam = build_seeded_sam(spec)
    else:
        from tasks.models.weights import checkpoint_path

        sam = build_checkpoint_sam(spec, checkpoint_path(spec, models_dir))
    count_load(spec.name)
    return SamAdapter(spec, sam, identity, device)


# -------------------------------------------------------------------------------------------------- adapter
class SamAdapter:
    """Image embeddings and prompt decoding for one SAM model (eval mode, inference_mode forwards)."""

    def __init__(self, spec: ModelSpec, model: Sam, identity: ModelIdentity, device: str = "cpu"):
        self.spec = spec
        self.identity = identity
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.prompt_chunk = 32  # prompts per decoder forward: bounds memory (each repeats the embedding)
        # images per encoder forward. On CPU one: a batch of n holds n x 805 MB of global-attention scores
        # (ViT-B, 12 heads x 4096^2), which is slower per image (33 vs 28 s, one thread) and stops two processes
        # from scaling (1.15x instead of 1.74x on 2 cores); a GPU takes the whole batch.
        self.encoder_batch: int | None = 1 if self.device.type == "cpu" else None
        self.image_size: int = spec.arch["image_size"]
        self.transform = ResizeLongestSide(self.image_size)
        self._mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.preprocess.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """C x h x w of one image embedding (256 x 64 x 64 for the official models)."""
        grid = self.image_size // self.spec.arch["patch_size"]
        return self.spec.arch["prompt_embed_dim"], grid, grid

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an H x W image after the longest side is resized to image_size."""
        return ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], self.image_size)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 -> 3 x S x S float32: resized, normalised, zero-padded bottom/right (S = image_size)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        resized = self.transform.apply_image(image)
        x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
        x = (x - self._mean) / self._std
        h, w = x.shape[-2:]
        return torch.nn.functional.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """images: list of H_i x W_i x 3 uint8 (fed as given; the caller decides RGB/BGR). Each is resized (longest
        side -> image_size), normalised with the spec's pixel mean/std and padded to image_size x image_size; all go
        through the image encoder in forwards of ``encoder_batch`` images (one counted call in all).
        Returns B x C x h x w float32."""
        if len(images) == 0:
            return np.zeros((0, *self.embedding_shape), np.float32)
        step = self.encoder_batch or len(images)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), step):
                batch = torch.stack([self._prepare(img) for img in images[start:start + step]]).to(self.device)
                out.append(self.model.image_encoder(batch).float().cpu().numpy())
        count_call(self.spec.name)
        return np.concatenate(out)

    def _prompts(self, original_size: tuple[int, int], boxes: np.ndarray | None, points: np.ndarray | None,
                 point_labels: np.ndarray | None) -> tuple[_Points | None, torch.Tensor | None, int]:
        """Prompt tensors in model input coordinates: points N x P x 2 + labels N x P (shared by every box), boxes
        N x 4; and N, the number of prompts."""
        box_t = None
        n = 0
        if boxes is not None and len(boxes) > 0:
            b = self.transform.apply_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), original_size)
            box_t = torch.as_tensor(b, dtype=torch.float32, device=self.device)
            n = box_t.shape[0]
        pts = None
        if points is not None and len(points) > 0:
            p = np.asarray(points, np.float64).reshape(-1, 2)
            labels = np.ones(len(p)) if point_labels is None else np.asarray(point_labels).reshape(-1)
            if len(labels) != len(p):
                raise ValueError(f"{len(p)} points but {len(labels)} point labels")
            n = max(n, 1)
            c = torch.as_tensor(self.transform.apply_coords(p, original_size), dtype=torch.float32, device=self.device)
            lab = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
            pts = (c[None].expand(n, -1, -1), lab[None].expand(n, -1))
        return pts, box_t, n

    def predict(self, embedding: np.ndarray, original_size: tuple[int, int], boxes: np.ndarray | None = None,
                points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                multimask: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """embedding: C x h x w (one image's row of :meth:`embed`). boxes: N x 4 xyxy in original pixels, one prompt
        each; points P x 2 xy (labels P, 1 = positive, default all 1) are shared by every box prompt, or form a single
        prompt when there are no boxes. Returns masks N x K x H x W bool (logits > 0, upscaled to original_size like
        SamPredictor.postprocess_masks) and iou predictions N x K float32, K = 3 if multimask else 1.
        No prompt -> (0 x K x H x W, 0 x K) without a model call; otherwise one counted call, decoded in chunks of
        ``prompt_chunk`` prompts so memory stays bounded when a detector returns hundreds of boxes."""
        k = 3 if multimask else 1
        h, w = int(original_size[0]), int(original_size[1])
        pts, box_t, n = self._prompts((h, w), boxes, points, point_labels)
        if n == 0:
            return np.zeros((0, k, h, w), bool), np.zeros((0, k), np.float32)
        if tuple(embedding.shape) != self.embedding_shape:
            raise ValueError(f"embedding shape {embedding.shape} != {self.embedding_shape}")
        emb = torch.as_tensor(np.asarray(embedding, np.float32), device=self.device)[None]
        masks = np.zeros((n, k, h, w), bool)
        ious = np.zeros((n, k), np.float32)
        with torch.inference_mode():
            for lo in range(0, n, self.prompt_chunk):
                hi = min(lo + self.prompt_chunk, n)
                chunk_pts = None if pts is None else (pts[0][lo:hi], pts[1][lo:hi])
                chunk_box = None if box_t is None else box_t[lo:hi]
                sparse, dense = self.model.prompt_encoder(points=chunk_pts, boxes=chunk_box, masks=None)
                low_res, iou = self.model.mask_decoder(
                    image_embeddings=emb, image_pe=self.model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
                logits = self.model.postprocess_masks(low_res, self.input_size((h, w)), (h, w))
                masks[lo:hi] = (logits > self.model.mask_threshold).cpu().numpy()
                ious[lo:hi] = iou.float().cpu().numpy()
        count_call(self.spec.name)
        return masks, ious
