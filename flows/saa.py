"""SAA flow: wiring only. The plan is tasks/saa/plan.py; shared stages tasks/stages; SAA's own tasks/saa/stages.py."""
from __future__ import annotations

from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.report.finish import finish_run
from tasks.saa import plan
from tasks.saa.config import SAAConfig


@method_flow(name="saa", persist_result=False)
def saa_flow(config: SAAConfig, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
             save_maps_dir: str | None = None) -> dict:
    ctx = ctx.started()
    run = start_run(ctx, "saa", config.model_dump(mode="json"), dataset, plan.model_names(config),
                    plan.side_inputs(config))
    maps = plan.chain(ctx, run, config)
    return finish_run(ctx, run, maps, config.eval_resolution, config.normalise, out_dir, save_maps_dir)
