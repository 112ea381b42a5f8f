"""SAA's plan: which stages run with which parameters (METHODS.md §1). The flow (``flows/saa.py``) only wires."""
from __future__ import annotations

from stores import ArtifactRef
from tasks.engine.context import RunContext
from tasks.engine.run_state import RunState
from tasks.saa import stages
from tasks.saa.config import SAAConfig
from tasks.saa.regions import BoxFilter, defect_box_params
from tasks.stages import grounding_dino as gdino_stages
from tasks.stages import sam as sam_stages


def model_names(config: SAAConfig) -> list[str]:
    """The models a run loads: SAM unless the refiner is the oracle, GroundingDINO unless the boxes are."""
    return [config.models.sam] * (config.refiner == "sam") + \
        [config.models.detector] * (config.region_generator == "grounding_dino")


def side_inputs(config: SAAConfig) -> tuple[str, ...]:
    """Oracle boxes read the ground truth (hashed into their keys)."""
    return ("mask",) if config.region_generator != "grounding_dino" else ()


def chain(ctx: RunContext, run: RunState, config: SAAConfig) -> ArtifactRef:
    """Embed, detect, filter, refine, fuse: the anomaly_map artifact of every image still in the run."""
    uses_sam = config.refiner == "sam"
    embeddings = None
    if uses_sam:
        embeddings = sam_stages.image_embedding(ctx, run.alive, params={"color_order": config.sam_color_order},
                                                models={"sam": config.models.sam})
        run.absorb(ctx, embeddings)
    if config.region_generator == "grounding_dino":
        detections = gdino_stages.grounding_detections(ctx, run.alive, models={"detector": config.models.detector},
                                                       keys=config.defect_prompts)
        run.absorb(ctx, detections)
        rule = BoxFilter(config.box_threshold, config.text_threshold, config.max_box_area,
                         max_boxes=config.max_boxes_per_caption)
        boxes = stages.defect_boxes(ctx, run.alive, models={"detector": config.models.detector},
                                    params=defect_box_params(rule, config.defect_prompts, config.filter_word),
                                    upstream={"detections": detections.ref})
    else:
        boxes = stages.oracle_defect_boxes(ctx, run.alive, params={"generator": "oracle", "area_threshold": None})
    run.absorb(ctx, boxes)
    masks = sam_stages.refine_boxes(ctx, run.alive, produces_as="defect_masks",
                                    params={"refiner": config.refiner, "zero_mask_when_empty": True},
                                    models={"sam": config.models.sam if uses_sam else None},
                                    upstream={"boxes": boxes.ref, "embeddings": embeddings.ref if embeddings else None})
    run.absorb(ctx, masks)
    maps = stages.anomaly_map(ctx, run.alive, upstream={"masks": masks.ref},
                              params={"fusion": config.fusion, "top_k": config.top_k,
                                      "resolution": config.eval_resolution})
    run.absorb(ctx, maps)
    return maps.ref
