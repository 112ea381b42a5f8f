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
from tasks.models.captions import normalize_caption
from tasks.saa.regions import BoxFilter, defect_box_params
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
    object_caption = normalize_caption(cp.object_caption(cfg.object_caption))
    captions = ([c for c, _ in cp.captions] if cfg.region_generator == "grounding_dino" else []) + \
        ([object_caption] if gdino_objects else [])
    detector = {"detector": cfg.models.detector}
    detections = gdino_stages.grounding_detections(ctx, images, models=detector, keys=captions) if captions else None
    images = run.absorb(ctx, detections, images)
    obj_boxes = objects = None
    if gdino_objects:
        rule = BoxFilter(cfg.box_threshold, cfg.text_threshold, max_area=1.0 / cp.object_count)
        obj_boxes = stages.object_boxes(ctx, images, params={"caption": object_caption, "rule": dict(rule.__dict__)},
                                        upstream={"detections": detections.ref})
        images = run.absorb(ctx, obj_boxes, images)
        objects = sam_stages.refine_boxes(ctx, images, produces_as="object_masks",
                                          params={"refiner": "sam", "zero_mask_when_empty": False},
                                          models={"sam": cfg.models.sam},
                                          upstream={"boxes": obj_boxes.ref, "embeddings": embeddings})
        images = run.absorb(ctx, objects, images)
    elif on.property:
        obj_boxes = oracle.oracle_object_boxes(ctx, images, params={"generator": "oracle"})
        images = run.absorb(ctx, obj_boxes, images)
        objects = oracle.oracle_object_masks(ctx, images, params={"generator": "oracle"})
        images = run.absorb(ctx, objects, images)
    theta = cfg.area_threshold or cp.area_threshold
    on_boxes = on.property and cfg.property_on == "boxes"
    box_objects = {"objects": obj_boxes.ref if on_boxes else None}
    if cfg.region_generator == "grounding_dino":
        rule = BoxFilter(cfg.box_threshold, cfg.text_threshold, max_boxes=cfg.max_boxes_per_caption)
        params = defect_box_params(rule, [c for c, _ in cp.captions], [w for _, w in cp.captions],
                                   theta if on_boxes else None)
        candidates = saa.defect_boxes(ctx, images, params=params, models=detector,
                                      upstream={"detections": detections.ref, **box_objects})
    else:
        candidates = saa.oracle_defect_boxes(ctx, images, upstream=box_objects,
                                             params={"generator": "oracle", "area_threshold": theta if on_boxes else None})
    images = run.absorb(ctx, candidates, images)
    uses_sam = cfg.refiner == "sam"
    masks = sam_stages.refine_boxes(ctx, images, produces_as="defect_masks",
                                    params={"refiner": cfg.refiner, "zero_mask_when_empty": True},
                                    models={"sam": cfg.models.sam if uses_sam else None},
                                    upstream={"boxes": candidates.ref, "embeddings": embeddings if uses_sam else None})
    images = run.absorb(ctx, masks, images)
    saliency = None
    if on.saliency:
        multi = cp.object_count > 1 and objects is not None
        saliency = stages.saliency_map(
            ctx, images, models={"backbone": cfg.models.saliency}, upstream={"objects": objects.ref if multi else None},
            params={"multi": multi, "k": cfg.saliency_k, "neighbours": cfg.saliency_neighbours,
                    "color_order": cfg.color_order, "single_size": cfg.single_instance_size,
                    "multi_size": cfg.multi_instance_size if multi else None,
                    "object_count": cp.object_count if multi else None})
        images = run.absorb(ctx, saliency, images)
    scoring = ScoringRule(k=(cfg.k or cp.k) if on.confidence else None, fusion=cfg.fusion,
                          rescore_scale=cfg.rescore_scale,
                          property_on_masks=on.property and cfg.property_on == "masks", area_threshold=theta,
                          location_constraint=on.property and cfg.location_constraint,
                          location_min_overlap=cfg.location_min_overlap)
    needs_objects = scoring.property_on_masks or scoring.location_constraint
    maps = stages.saa_plus_map(ctx, images, params={"rule": dict(scoring.__dict__), "resolution": cfg.eval_resolution},
                               upstream={"masks": masks.ref, "saliency": saliency.ref if saliency else None,
                                         "objects": objects.ref if needs_objects else None})
    run.absorb(ctx, maps)
    return maps.ref
