"""SAM-LAD flow: wiring only. The plan is tasks/sam_lad/plan.py; its stages tasks/sam_lad/stages_*.py."""
from __future__ import annotations

import dataclasses

from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.report.finish import finish_run
from tasks.sam_lad import plan
from tasks.sam_lad.config import SAMLADConfig


@method_flow(name="sam-lad", persist_result=False)
def sam_lad_flow(config: SAMLADConfig, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
                 save_maps_dir: str | None = None) -> dict:
    ctx = ctx.started()
    dataset = dataclasses.replace(dataset, support_splits=plan.support_splits(config))
    config, notes = plan.resolve_upsampler(config, ctx)
    run = start_run(ctx, "sam-lad", config.model_dump(mode="json"), dataset, plan.model_names(config),
                    plan.side_inputs(config))
    run.notes.extend(notes)
    maps, map_items = plan.chain(ctx, run, config, dataset.kind, plan.is_synthetic(dataset.root))
    return finish_run(ctx, run, maps, config.eval_resolution, config.normalise, out_dir, save_maps_dir,
                      tuple(config.max_fprs), map_items)
