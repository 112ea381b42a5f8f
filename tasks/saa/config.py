"""Vanilla SAA configuration: the paper's SAA (the official code has no vanilla mode), with the official code's
settings for the stages it shares with SAA+ (METHODS.md §2)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.config import StrictModel


class SAAModels(StrictModel):
    sam: str = "sam-vit-h"            # official code: ViT-H sam_vit_h_4b8939
    detector: str = "gdino-swint-ogc"  # GroundingDINO Swin-T OGC


class SAAConfig(StrictModel):
    """Vanilla SAA: one class-agnostic prompt, no property/saliency/confidence regularisation."""

    models: SAAModels = SAAModels()
    region_generator: Literal["grounding_dino", "oracle"] = "grounding_dino"
    refiner: Literal["sam", "oracle"] = "sam"
    defect_prompts: list[str] = Field(default_factory=lambda: ["defect"], min_length=1)
    box_threshold: float = Field(0.1, ge=0.0, le=1.0)
    text_threshold: float = Field(0.1, ge=0.0, le=1.0)
    max_box_area: float = Field(1.0, gt=0.0, le=1.0)   # normalised w*h; vanilla SAA applies none
    max_boxes_per_caption: int | None = Field(None, ge=1)  # keep the N best per caption; None = all (official)
    filter_word: str = ""                              # drop boxes whose phrase contains it; "" = off
    sam_color_order: Literal["bgr", "rgb"] = "bgr"      # official code feeds SAM the BGR array [QUIRK]
    fusion: Literal["official", "mean"] = "official"    # official: / (1 + sum of masks) [QUIRK]; mean: paper Eq. 9
    top_k: int | None = Field(None, ge=1)               # None = keep every candidate (vanilla SAA)
    # maps R x R (ground truth resized to R x R), or "native": each image's own H x W (non-square; MVTec LOCO)
    eval_resolution: Annotated[int, Field(ge=16, le=4096)] | Literal["native"] = 400
    normalise: Literal["category_minmax", "none"] = "category_minmax"
    batch_size: int = Field(4, ge=1, le=256)
