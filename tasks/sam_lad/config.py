"""SAM-LAD configuration (METHODS.md §4). The paper has no public code: every choice it leaves open is a field
here, with METHODS' proposed default, and the README lists them as UNVERIFIED."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.config import StrictModel


class SAMLADModels(StrictModel):
    sam: str = "sam-vit-h"                   # AMG model: not given by the paper (UNVERIFIED); SAM-H as METHODS
    backbone: str = "dinov2-vits14"          # DINOv2 ViT-S/14 [P]
    upsampler: str = "featup-jbu-dinov2"     # FeatUp's JBU stack for DINOv2 [P]; only read when upsampler=featup


class MaskGenerator(StrictModel):
    """SAM automatic mask generation (segment-anything's defaults; the paper gives none: UNVERIFIED)."""

    points_per_side: int = Field(32, ge=1, le=128)
    points_per_batch: int = Field(64, ge=1, le=1024)
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    min_mask_region_area: int = Field(0, ge=0)


class SAMLADConfig(StrictModel):
    models: SAMLADModels = SAMLADModels()
    # --- inputs, bank, references (§4.2)
    feature_size: int = Field(224, ge=14, le=1022)           # DINOv2 input side [P]; 16 x 16 tokens at 224
    include_validation: bool = False                         # validation/good joins train/good in the bank (open)
    coreset_fraction: float | None = Field(None, gt=0.0, le=1.0)   # k-center greedy subsample; None = off [P]
    coreset_seed: int = 0
    k_references: int = Field(2, ge=1, le=16)                # k nearest normal images [P]
    random_single_reference: bool = False                    # Eq. 2 literally: one random pick among the k nearest
    reference_seed: int = 0
    # --- objects (§4.3)
    object_source: Literal["sam", "oracle"] = "sam"          # oracle: the synthetic sets' object labels (tests)
    mask_generator: MaskGenerator = MaskGenerator()
    object_areas: str = "auto"    # auto (by --dataset) | none | path to a YAML table: per-category area fractions
    max_objects: int = Field(64, ge=1, le=1024)              # largest objects kept after the area filter
    # --- upsampling (§4.4)
    # auto: FeatUp's JBU when its weights are in the models folder (or --random-weights), else the non-learned
    # joint bilateral substitute (a note says so); featup: FeatUp or an error (tiny-featup-jbu with --allow-tiny)
    upsampler: Literal["auto", "featup", "joint_bilateral", "bilinear"] = "auto"
    upsample_factor: Literal[1, 2, 4, 8, 16] = 8             # x8 [P]; x1 / x2 are the paper's Table 7 rows
    # --- DCGA (§4.6)
    dcga_mode: Literal["residual", "literal", "gmp", "gap"] = "residual"
    dcga_w: float = 1.0                                      # AGCA's scalar 1-D conv weight (no released value)
    pool_inside_mask: bool = True                            # GMP over the object's own positions only
    # --- OMM (§4.7)
    dustbin_z: float = 0.5                                   # SuperGlue's learned bin score is not for cosines
    match_temperature: float = Field(0.1, gt=0.0)            # scores and z / T before Sinkhorn (T = 1: paper literal)
    sinkhorn_iterations: int = Field(100, ge=1, le=10000)
    match_threshold: float = Field(0.2, ge=0.0, le=1.0)
    match_rule: Literal["any", "all", "majority"] = "any"    # unmatched w.r.t. any / all / most references
    # --- AMM and the map (§4.8, §4.9)
    eps: float = Field(0.01, gt=0.0)                         # Σ + εI (PaDiM's value)
    align: Literal["frame", "bbox"] = "frame"
    variant: Literal["full", "unmatched_only"] = "full"      # unmatched_only: DigitAnatomy's Eq. 16
    score_missing_objects: bool = True                       # anomflow's extension: reference objects left unmatched
    smoothing_sigma: float = Field(4.0, ge=0.0)              # Gaussian σ (px) after the upsampling to image size
    # --- evaluation
    eval_resolution: Annotated[int, Field(ge=16, le=4096)] | Literal["native"] = "native"
    normalise: Literal["category_minmax", "none"] = "none"
    max_fprs: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.3, 1.0], min_length=1)
    batch_size: int = Field(4, ge=1, le=256)
