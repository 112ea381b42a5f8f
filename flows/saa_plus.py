"""SAA+ flow: wiring only. METHODS.md §2 is the spec; the per-category plan is tasks/saa_plus/plan.py."""
from __future__ import annotations

from collections import defaultdict

from tasks.engine.context import ImageItem, RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.report.finish import finish_run
from tasks.stages import sam as sam_stages
from tasks.saa_plus import plan
from tasks.saa_plus.config import SAAPlusConfig
from tasks.saa_plus.expert import prompts_for


@method_flow(name="saa-plus", persist_result=False)
def saa_plus_flow(config: SAAPlusConfig, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
                  save_maps_dir: str | None = None) -> dict:
    ctx = ctx.started()
    table = plan.expert_table(config.expert_table, dataset.kind)   # before any work
    run = start_run(ctx, "saa-plus", config.model_dump(mode="json"), dataset, plan.model_names(config),
                    plan.side_inputs(config))
    uses_sam, _ = plan.uses(config)
    embeddings = (sam_stages.image_embedding(ctx, run.alive, params={"color_order": config.color_order},
                                             models={"sam": config.models.sam}) if uses_sam else None)
    run.absorb(ctx, embeddings)
    by_category: dict[str, list[ImageItem]] = defaultdict(list)
    for item in run.alive:
        by_category[item.record.category].append(item)
    maps = {}
    for category, images in sorted(by_category.items()):
        prompts = prompts_for(table, category, language=config.prompts.language)
        if prompts.warning:
            run.notes.append(prompts.warning)
        maps[category] = plan.category_chain(ctx, run, config, prompts, images,
                                             embeddings.ref if embeddings else None)
    return finish_run(ctx, run, maps, config.eval_resolution, config.normalise, out_dir, save_maps_dir)
