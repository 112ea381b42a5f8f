"""SAA+'s per-category plan: which stages run, with which captions, θ, K and scoring rule (METHODS.md §2).

The flow (``flows/saa_plus.py``) only wires: it starts the run, embeds the images once, and calls
:func:`category_chain` for each category with the prompts of the expert table.
"""
from __future__ import annotations

from stores import ArtifactRef
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.run_state import RunState
from tasks.saa import stages as saa
from tasks.stages import grounding_dino as gdino_stages
from tasks.stages import sam as sam_stages
from tasks.saa.regions import BoxFilter
from tasks.saa_plus import oracle, stages
from tasks.saa_plus.config import SAAPlusConfig
from tasks.saa_plus.expert import CategoryPrompts, load_table
from tasks.saa_plus.scoring import ScoringRule


def expert_table(name: str, dataset_kind: str):
    """The expert table a run uses (``auto`` = by dataset kind), or None; ``ExpertError`` if it cannot load."""
    table_name = dataset_kind if name == "auto" else name
    return load_table(table_name) if table_name not in ("folder", "none") else None


def detects_objects(cfg: SAAPlusConfig) -> bool:
    """The object pass runs GroundingDINO + SAM (property prompt on, objects not from an oracle)."""
    return cfg.prompts.property and cfg.object_generator == "grounding_dino"


def uses(cfg: SAAPlusConfig) -> tuple[bool, bool]:
    """(SAM needed, GroundingDINO needed) given the stage slots and the prompt switches."""
    return (cfg.refiner == "sam" or detects_objects(cfg),
            cfg.region_generator == "grounding_dino" or detects_objects(cfg))


def model_names(cfg: SAAPlusConfig) -> list[str]:
    """The models a run loads, in the order the report lists them."""
    uses_sam, uses_gdino = uses(cfg)
    return ([cfg.models.sam] * uses_sam + [cfg.models.detector] * uses_gdino
            + [cfg.models.saliency] * cfg.prompts.saliency)


def side_inputs(cfg: SAAPlusConfig) -> tuple[str, ...]:
    """Per-image files the oracle slots read besides the image (hashed into their keys)."""
    return ("mask",) * (cfg.region_generator == "oracle") + \
        ("labels",) * (cfg.prompts.property and cfg.object_generator == "oracle")


def category_chain(ctx: RunContext, run: RunState, cfg: SAAPlusConfig, cp: CategoryPrompts,
                   images: list[ImageItem], embeddings: ArtifactRef | None) -> ArtifactRef:
    """One category's chain; its parameters (captions, n, K, θ) come from the expert table."""
    on = cfg.prompts
    gdino_objects = detects_objects(cfg)
    object_caption = cp.object_caption(cfg.object_caption)
    captions = ([c for c, _ in cp.captions] if cfg.region_generator == "grounding_dino" else []) + \
        ([object_caption] if gdino_objects else [])
    detections = gdino_stages.grounding_detections(ctx, images, cfg.models.detector, captions) if captions else None
    images = run.absorb(ctx, detections, images)
    obj_boxes = objects = None
    if gdino_objects:
        obj_boxes = stages.object_boxes(ctx, images, detections.ref, object_caption, cp.object_count,
                                        cfg.box_threshold, cfg.text_threshold)
        images = run.absorb(ctx, obj_boxes, images)
        objects = sam_stages.refine_boxes(ctx, images, obj_boxes.ref, embeddings, "sam", cfg.models.sam,
                                   produces="object_masks", zero_mask_when_empty=False)
        images = run.absorb(ctx, objects, images)
    elif on.property:
        obj_boxes = oracle.oracle_object_boxes(ctx, images)
        images = run.absorb(ctx, obj_boxes, images)
        objects = oracle.oracle_object_masks(ctx, images)
        images = run.absorb(ctx, objects, images)
    theta = cfg.area_threshold or cp.area_threshold
    on_boxes = on.property and cfg.property_on == "boxes"
    if cfg.region_generator == "grounding_dino":
        rule = BoxFilter(cfg.box_threshold, cfg.text_threshold, max_boxes=cfg.max_boxes_per_caption)
        candidates = saa.defect_boxes(ctx, images, detections.ref, cfg.models.detector, cp.captions, rule,
                                      obj_boxes.ref if on_boxes else None, theta if on_boxes else None)
    else:
        candidates = saa.oracle_defect_boxes(ctx, images, obj_boxes.ref if on_boxes else None,
                                             theta if on_boxes else None)
    images = run.absorb(ctx, candidates, images)
    masks = sam_stages.refine_boxes(ctx, images, candidates.ref, embeddings, cfg.refiner, cfg.models.sam)
    images = run.absorb(ctx, masks, images)
    saliency = None
    if on.saliency:
        saliency = stages.saliency_map(ctx, images, cfg.models.saliency, objects.ref if objects else None,
                                       cp.object_count, cfg.saliency_k, cfg.saliency_neighbours, cfg.color_order,
                                       cfg.single_instance_size, cfg.multi_instance_size)
        images = run.absorb(ctx, saliency, images)
    scoring = ScoringRule(k=(cfg.k or cp.k) if on.confidence else None, fusion=cfg.fusion,
                          rescore_scale=cfg.rescore_scale,
                          property_on_masks=on.property and cfg.property_on == "masks", area_threshold=theta,
                          location_constraint=on.property and cfg.location_constraint,
                          location_min_overlap=cfg.location_min_overlap)
    needs_objects = scoring.property_on_masks or scoring.location_constraint
    maps = stages.saa_plus_map(ctx, images, masks.ref, saliency.ref if saliency else None,
                               objects.ref if needs_objects else None, scoring, cfg.eval_resolution)
    run.absorb(ctx, maps)
    return maps.ref
