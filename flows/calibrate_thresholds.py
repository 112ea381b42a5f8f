"""Threshold calibration flow: wiring only (the logic is in tasks/decisions/). Kept apart from flows/calibrate.py,
whose SAM-LAD imports need torch, which calibrating SAA does not."""
from __future__ import annotations

import dataclasses
from typing import Any

from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec


@method_flow(name="calibrate-thresholds", persist_result=False)
def calibrate_thresholds_flow(config: Any, ctx: RunContext, dataset: DatasetSpec, out_dir: str,
                              save_maps_dir: str | None = None, *, method: str, split: str, target_frr: float,
                              thresholds_out: str) -> dict:
    """Run ``method``'s own flow on ``split`` (its cached maps and evaluation; the report goes to ``out_dir``),
    then the per-category ``decision_thresholds`` items, exported to ``thresholds_out``.

    Returns the method flow's outcome plus ``calibration`` (tasks.decisions.export.export_thresholds)."""
    from flows.methods import method_entry
    from tasks.decisions.export import export_thresholds

    _, scoring_flow = method_entry(method)
    outcome = scoring_flow(config=config, ctx=ctx, dataset=dataclasses.replace(dataset, split=split),
                           out_dir=out_dir, save_maps_dir=save_maps_dir)
    outcome["calibration"] = export_thresholds(ctx, outcome, target_frr, thresholds_out)
    return outcome
