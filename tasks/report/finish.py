"""End of every method's flow: evaluate each category, write report.json and report.html, close the run."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from stores import ArtifactRef
from tasks.engine.context import RunContext
from tasks.engine.fallbacks import fallback_note
from tasks.engine.run_state import RunState
from tasks.report.evaluate import CategoryResult, evaluate_categories
from tasks.report.figures_stage import figures_for_report
from tasks.report.post_run import after_evaluation, exit_code
from tasks.validation.run import import_gx_in_background
from tasks.report.report_html import render_html
from tasks.report.report_json import build_report, write_json_atomic


class ReportError(RuntimeError):
    """The stages finished but their report could not be written; the message says what was kept."""


def _kept(ctx: RunContext, state: RunState, what: str, exc: OSError) -> ReportError:
    reason = exc.strerror or str(exc)
    state.record(ctx, "failed", error=f"{what}: {reason}")
    done = sum(s.computed for s in state.stages)
    return ReportError(f"{what}: {reason}. Nothing computed is lost: {done} newly computed items are kept in "
                       f"store {ctx.store_url} (run {state.run_id}); rerun the same command to write the report "
                       "without recomputing them.")


@task(cache_policy=NO_CACHE, persist_result=False)
def write_reports(out_dir: str, report: dict, categories: list[CategoryResult]) -> str:
    """report.json and report.html; the html's pictures come from the cached ``report_figures`` stage (its
    statistics and any figure note are added to ``report``)."""
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    figures = figures_for_report(report, categories)
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(render_html(report, figures))
    os.replace(html_path + ".tmp", html_path)
    report["timings"]["report"] = round(time.perf_counter() - started, 3)
    path = os.path.join(out_dir, "report.json")
    write_json_atomic(path, report)   # last, with the report's own time
    return path


def _note_constant_maps(state: RunState, categories: list[CategoryResult],
                        maps: ArtifactRef | dict[str, ArtifactRef]) -> None:
    """Name each category whose maps were all one value (a fallback) and count its images on the map stage."""
    for cat in categories:
        if cat.constant_maps:
            ref = maps[cat.category] if isinstance(maps, dict) else maps
            stats = next((s for s in state.stages if s.name == ref.stage), None)
            if stats is not None:
                stats.detail["constant_category_maps"] = stats.detail.get("constant_category_maps", 0) + len(cat.images)
            paths = [os.path.relpath(i["path"], state.dataset.root) if state.dataset.root else i["path"]
                     for i in cat.images]
            state.notes.append(f"category {cat.category}: " + fallback_note(ref.stage, "constant_category_maps", paths))


def finish_run(ctx: RunContext, state: RunState, maps: ArtifactRef | dict[str, ArtifactRef], resolution: int,
               normalise: str, out_dir: str, save_maps_dir: str | None,
               max_fprs: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0),
               map_items: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate per category (ground truth where it exists), write the reports, mark the run complete.

    maps: one artifact for every category, or one per category (methods whose parameters are per category).
    max_fprs: the AUsPRO integration limits of an MVTec LOCO evaluation. map_items: {image id: item id} where
    the maps artifact keys its items by something else than the image (SAM-LAD: one item per query and its
    references).
    """
    evaluation_started = time.perf_counter()
    import_gx_in_background(ctx, state)   # a run that computed anything validates new content: import GX meanwhile
    try:
        categories = evaluate_categories(ctx, state, maps, resolution, normalise, save_maps_dir,
                                         max_fprs=tuple(max_fprs), map_items=map_items)
    except OSError as exc:
        raise _kept(ctx, state, f"could not write the maps to {save_maps_dir}", exc) from None
    _note_constant_maps(state, categories, maps)
    state.timings["evaluation"] = round(time.perf_counter() - evaluation_started, 3)
    state.timings["stages"] = round(sum(st.seconds for st in state.stages), 3)
    dataset = {**asdict(state.dataset), "images": len(state.records), "files_hashed": state.files_hashed,
               "categories": sorted({r.category for r in state.records}),
               **({"roles": {role: inputs.summary() for role, inputs in state.roles.items()}} if state.roles else {})}
    report = build_report(state.method, state.config, state.models, dataset, categories, state.tracker.failures,
                          state.stages, time.perf_counter() - state.started, state.run_id,
                          state.model_load_seconds(), state.notes, state.timings,
                          ctx.executor.describe() if ctx.dask_address else None)
    try:
        after_evaluation(ctx, state, categories, report, out_dir)
        path = write_reports(out_dir, report, categories)
    except OSError as exc:
        raise _kept(ctx, state, f"could not write the report to {out_dir}", exc) from None
    state.record(ctx, "complete")
    return {"report": path, "report_data": report, "exit_code": exit_code(ctx, report)}
