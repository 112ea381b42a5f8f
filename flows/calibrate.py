"""Calibration flows: wiring only (the logic is in tasks/sam_lad/calibrate.py)."""
from __future__ import annotations

from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.sam_lad import calibrate, objects
from tasks.sam_lad.config import SAMLADConfig


@method_flow(name="calibrate-sam-lad", persist_result=False)
def calibrate_sam_lad_flow(config: SAMLADConfig, ctx: RunContext, dataset: DatasetSpec, out_table: str,
                           expected: int | None = None) -> dict:
    """SAM automatic masks of train/good (cached), then per-category area bounds written to ``out_table``."""
    ctx = ctx.started()
    run = start_run(ctx, "calibrate-sam-lad", config.model_dump(mode="json"), dataset, [config.models.sam])
    table = objects.load_table(objects.table_path(config.object_areas, dataset.kind, objects.is_synthetic(dataset.root)))
    results = calibrate.calibrate(calibrate.mask_areas(ctx, run, config), table, expected)
    objects.write_table(out_table, {r.category: r.rule for r in results},
                        f"anomflow calibrate-areas sam-lad on {dataset.root} (train/good), "
                        f"SAM {config.models.sam}")
    run.record(ctx, "complete")
    return {"table": out_table, "categories": results, "failures": dict(run.tracker.failures)}
