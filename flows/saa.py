"""SAA flow: wiring only. Shared SAM/GroundingDINO stages: tasks/stages; SAA's own: tasks/saa/stages.py."""
from __future__ import annotations

from prefect import flow

from tasks.engine.context import RunContext
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.report.finish import finish_run
from tasks.saa import stages
from tasks.stages import grounding_dino as gdino_stages
from tasks.stages import sam as sam_stages
from tasks.saa.config import SAAConfig
from tasks.saa.regions import BoxFilter, defect_box_params


@flow(name="saa", persist_result=False)
def saa_flow(config: SAAConfig, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
             save_maps_dir: str | None = None) -> dict:
    ctx = ctx.started()
    uses_sam = config.refiner == "sam"
    uses_gdino = config.region_generator == "grounding_dino"
    model_names = [config.models.sam] * uses_sam + [config.models.detector] * uses_gdino
    side_inputs = ("mask",) if not uses_gdino else ()   # oracle boxes read the ground truth
    run = start_run(ctx, "saa", config.model_dump(mode="json"), dataset, model_names, side_inputs)

    embeddings = None
    if uses_sam:
        embeddings = sam_stages.image_embedding(ctx, run.alive, params={"color_order": config.sam_color_order},
                                                models={"sam": config.models.sam})
        run.absorb(ctx, embeddings)
    if uses_gdino:
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
    return finish_run(ctx, run, maps.ref, config.eval_resolution, config.normalise, out_dir, save_maps_dir)
