"""SAA+ configuration. Defaults reproduce the official implementation (METHODS.md §2.6); flags give the paper's form."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.config import StrictModel


class SAAPlusModels(StrictModel):
    sam: str = "sam-vit-h"
    detector: str = "gdino-swint-ogc"
    saliency: str = "wrn50-2"


class PromptSwitches(StrictModel):
    """Each hybrid prompt kind can be switched off (the paper's Table 2 ablation)."""

    language: bool = True     # expert class-specific captions (the general captions always run)
    property: bool = True     # object count and defect area relative to the object
    saliency: bool = True     # WideResNet-50-2 self-similarity rescoring
    confidence: bool = True   # keep the top-K candidates


class SAAPlusConfig(StrictModel):
    models: SAAPlusModels = SAAPlusModels()
    prompts: PromptSwitches = PromptSwitches()
    expert_table: str = "auto"          # auto (by --dataset) | mvtec | visa | none | path to a YAML file
    # swappable stage slots; "oracle" = ground truth (synthetic data only for objects), for exact tests
    region_generator: Literal["grounding_dino", "oracle"] = "grounding_dino"   # defect boxes
    refiner: Literal["sam", "oracle"] = "sam"                                  # defect boxes -> masks
    object_generator: Literal["grounding_dino", "oracle"] = "grounding_dino"   # object boxes + masks
    box_threshold: float = Field(0.1, ge=0.0, le=1.0)
    text_threshold: float = Field(0.1, ge=0.0, le=1.0)
    max_boxes_per_caption: int | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1)   # override the table's K for every category
    area_threshold: float | None = Field(None, gt=0.0, le=1.0)  # override the table's θ
    # paper-exact / clean switches (defaults = official code)
    object_caption: Literal["official", "clean"] = "official"   # official: "bottle,." (word taken with its comma)
    property_on: Literal["boxes", "masks"] = "boxes"       # paper: on refined masks
    location_constraint: bool = False                       # paper's IoU/location prompt (absent in code)
    location_min_overlap: float = Field(0.5, ge=0.0, le=1.0)  # share of a defect that must lie on the object
    fusion: Literal["official", "mean"] = "official"        # paper: plain average over overlaps
    saliency_neighbours: Literal["farthest", "nearest"] = "farthest"  # paper: nearest neighbours
    saliency_k: int = Field(400, ge=1)
    color_order: Literal["bgr", "rgb"] = "bgr"              # into SAM and WRN; paper/clean: rgb
    rescore_scale: float = Field(3.0, ge=0.0)               # s' = s * exp(scale * mean saliency); paper: 1
    single_instance_size: int = Field(256, ge=32)
    multi_instance_size: int = Field(1024, ge=32)
    # maps R x R (ground truth resized to R x R), or "native": each image's own H x W (non-square; MVTec LOCO)
    eval_resolution: Annotated[int, Field(ge=16, le=4096)] | Literal["native"] = 400
    normalise: Literal["category_minmax", "none"] = "category_minmax"
    batch_size: int = Field(4, ge=1, le=256)
