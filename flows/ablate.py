"""The SAA+ ablation (paper Table 2): six variants in one process over one store; wiring only."""
from __future__ import annotations

import os

from flows.saa import saa_flow
from flows.saa_plus import saa_plus_flow
from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec
from tasks.saa_plus.ablation import VARIANTS, variant_config, write_ablation
from tasks.saa_plus.config import SAAPlusConfig


@method_flow(name="ablate-saa-plus", persist_result=False)
def ablate_saa_plus_flow(config: SAAPlusConfig, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
                         save_maps_dir: str | None = None, variants: list[str] = list(VARIANTS)) -> dict:
    reports, exit_code = {}, 0
    for name in variants:
        run = saa_flow if name == "saa" else saa_plus_flow
        outcome = run(config=variant_config(config, name), ctx=ctx, dataset=dataset,
                      out_dir=os.path.join(out_dir, name))
        reports[name] = outcome["report_data"]
        exit_code = max(exit_code, outcome["exit_code"])
    path = write_ablation(out_dir, dataset.kind, reports)
    return {"report": path, "reports": reports, "exit_code": exit_code}
