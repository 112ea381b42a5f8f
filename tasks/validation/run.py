"""Great Expectations validation of a run: inputs (manifest), maps and scores (outputs), metrics.

Steps, all cached in the store: ``image_statistics`` (per input file of every role) and ``map_statistics`` (per
scored image's map), then the tables and suites (``frames``, ``suites``), then ``validation_results``, one item
per validated content holding the results and the Data Docs site. A warm identical run reads that item and writes
its Data Docs without importing Great Expectations (``"cached": true``).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import zipfile
from dataclasses import replace
from typing import Any

import numpy as np

from stores import ArtifactRef, ItemData, canonical_json
from stores.keys import sha256_text
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.inputs import item_of
from tasks.engine.runner import StageResult
from tasks.engine.stage import ItemSet
from tasks.validation import frames
from tasks.validation.baseline import baseline_summary, record_summary, score_summary
from tasks.validation.checks import is_metric, load_expected_counts
from tasks.validation.gx_stage import validation_results
from tasks.validation.stats_stages import image_statistics, map_statistics
from tasks.validation.suites import SUITE_VERSIONS, manifest_suite, metrics_suite, outputs_suite

STATS_BATCH = 256   # statistics items per committed pack (they are tiny; the run's model batch size is not theirs)
EVALUATION_STAGES = ("category_evaluation", "loco_evaluation")
DOCS_DIR = "data_docs"
_IMPORTING: threading.Thread | None = None   # the background import of GX, once per process


def validate_run(ctx: RunContext, state, categories: list, report: dict, out_dir: str) -> dict | None:
    """Record this run's score summary (for later ``--baseline`` runs), then validate unless switched off.

    Returns report.json's ``validation`` section: {success, cached, data_docs (index.html relative to out_dir),
    suites {name: {version, success, expectations [...]}}}, plus ``error`` when GX itself failed."""
    record_summary(ctx.run_id, score_summary(state.method, report["images"]))
    if not ctx.post.validate:
        return None
    import_gx_in_background(ctx, state)
    stats_ctx = _batched(ctx)
    entries = frames.role_entries(state)
    items = list({item_of(e.item, ("mask",)): e.item for e in entries if e.item}.values())
    image_result = image_statistics(stats_ctx, items)
    image_stats = _read(ctx, image_result.ref, {i.image_id: item_of(i, image_result.ref.side) for i in items})
    map_results, map_stats = _map_statistics(stats_ctx, state, report["images"])
    tables, suites = _tables_and_suites(ctx, state, report, entries, image_result, image_stats, map_stats)
    digest = sha256_text(canonical_json({"tables": tables, "suites": [s.as_dict() for s in suites]}))
    content = ItemSet(f"validation:{digest}", (), (), {"tables": tables, "suites": [s.as_dict() for s in suites]})
    upstream = {"image_statistics": image_result.ref, "map_statistics": map_results[0].ref if map_results else None}
    result = validation_results(ctx, params={"suite_versions": SUITE_VERSIONS}, upstream=upstream, sets=[content])
    _add_stage_rows(report, [image_result, *map_results, result])
    view = ctx.store.open(result.ref)
    item = content.item(result.ref.side)
    if not view.has(item):
        return {"success": False, "cached": False, "data_docs": None, "suites": {},
                "error": next(iter(result.failures.values()), "validation produced no result")}
    stored = view.read(item)
    docs = write_data_docs(stored.arrays["data_docs"], out_dir)
    return {"success": stored.meta["success"], "cached": result.stats.computed == 0, "data_docs": docs,
            "suites": stored.meta["suites"]}


def import_gx_in_background(ctx: RunContext, state) -> threading.Thread | None:
    """A run that computed anything validates new content: import GX (seconds) in a thread while other work goes
    on (the statistics here: mostly decoding, which releases the GIL). A run that computed nothing, like a warm
    rerun, does not import it; its validation is usually stored. Idempotent; the end of a run may call it early."""
    global _IMPORTING
    if not ctx.post.validate or "great_expectations" in sys.modules or _IMPORTING is not None \
            or not any(s.computed for s in state.stages):
        return None

    def load() -> None:
        try:
            import great_expectations.expectations  # noqa: F401
            import pandas  # noqa: F401
        except Exception:  # noqa: BLE001 - the validation stage imports it again and reports the error
            pass
    _IMPORTING = threading.Thread(target=load, name="import-great-expectations", daemon=True)
    _IMPORTING.start()
    return _IMPORTING


def _batched(ctx: RunContext) -> RunContext:
    """The context with the statistics' batch size, sharing the opened store (and Dask client, if any)."""
    batched = replace(ctx, batch_size=STATS_BATCH)
    for opened in ("store", "executor"):      # cached properties: reuse them rather than open them again
        if opened in ctx.__dict__:
            batched.__dict__[opened] = ctx.__dict__[opened]
    return batched


def _read(ctx: RunContext, ref: ArtifactRef, wanted: dict[str, str]) -> dict[str, ItemData]:
    """{key: item} for the items of ``wanted`` ({key: item id}) that ``ref`` holds."""
    view = ctx.store.open(ref)
    view.prefetch(list(wanted.values()))
    return {key: view.read(item) for key, item in wanted.items() if view.has(item)}


def map_items(ctx: RunContext, state, images: list[dict]) -> dict[ArtifactRef, list[tuple[str, str]]]:
    """{maps artifact: [(image id, map item id)]} for report.json's ``images``: the maps each evaluation read (its
    first upstream) and, where it keys maps by something else than the image, its ``map_items``. In the maps'
    storage order, so that each pack is read once."""
    alive = {i.image_id: i for i in state.alive}
    by_path = {r.path: r for r in state.artifacts}
    found: dict[ArtifactRef, list[tuple[str, str]]] = {}
    wanted = {img["id"] for img in images if img["id"] in alive}
    for ref in dict.fromkeys(r for r in state.artifacts if r.stage in EVALUATION_STAGES):
        record = ctx.store.artifact_record(ref.stage, ref.key)
        maps = by_path.get(record["upstream"][0])
        if maps is None:
            continue
        keyed = record["params"].get("map_items") or {}
        candidates = {i: keyed.get(i) or item_of(alive[i], maps.side) for i in sorted(wanted)}
        where = ctx.store.lookup(maps, list(set(candidates.values())))
        chosen = sorted(((i, m) for i, m in candidates.items() if m in where),
                        key=lambda pair: (where[pair[1]].pack, where[pair[1]].row))
        found.setdefault(maps, []).extend(chosen)
        wanted -= {i for i, _ in chosen}
    return found


def _map_statistics(ctx: RunContext, state, images: list[dict]) -> tuple[list[StageResult], dict[str, ItemData]]:
    alive = {i.image_id: i for i in state.alive}
    results, stats = [], {}
    for maps, chosen in map_items(ctx, state, images).items():
        sets = [ItemSet(f"map:{m}", (alive[i],), (), m) for i, m in chosen]
        result = map_statistics(ctx, upstream={"maps": maps}, sets=sets)
        results.append(result)
        stats.update(_read(ctx, result.ref, {s.members[0].image_id: s.item(result.ref.side) for s in sets}))
    return results, stats


def _tables_and_suites(ctx: RunContext, state, report: dict, entries: list, image_result: StageResult,
                       image_stats: dict[str, ItemData], map_stats: dict[str, ItemData]) -> tuple[dict, list]:
    post = ctx.post
    alive: dict[str, ImageItem] = {i.image_id: i for i in state.alive}
    tables = {"manifest": frames.manifest_columns(entries, image_stats, image_result.failures),
              "outputs": frames.outputs_columns(report["images"], alive, map_stats, image_stats,
                                                state.config.get("eval_resolution"))}
    expected = load_expected_counts(post.expected_counts) if post.expected_counts else None
    baseline = baseline_summary(ctx.store, post.baseline_run) if post.baseline_run else None
    run_categories = sorted({img["category"] for img in report["images"]})
    normalise = state.config.get("normalise", "none")
    check_shape = frames.expected_size(state.config.get("eval_resolution"), (1, 1)) is not None
    suites = [manifest_suite(frames.count_groups(entries), expected),
              outputs_suite(normalise, check_shape, baseline, run_categories)]
    _note(report, baseline, run_categories, state.method, post.baseline_run)
    metrics = {k: v for k, v in report["metrics"].items() if v}
    if metrics:
        tables["metrics"] = frames.metrics_columns(metrics)
        suites.append(metrics_suite(post.metric_floors))
        reported = {m for values in metrics.values() for m, v in values.items() if v is not None}
        for name, _ in post.metric_floors:
            if is_metric(name) and name not in reported:
                report["notes"].append(f"validation: --metric-floor {name}: this run reports no {name} value; "
                                       "the floor checks nothing")
    return tables, suites


def _note(report: dict, baseline: dict | None, categories: list[str], method: str, baseline_run: str | None) -> None:
    if baseline is None:
        return
    if baseline.get("method") != method:
        report["notes"].append(f"validation: baseline run {baseline_run} was made by {baseline.get('method')}, "
                               f"this run by {method}; its score drift bounds compare different methods")
    missing = sorted(set(categories) - set(baseline["categories"]))
    if missing:
        report["notes"].append(f"validation: baseline run {baseline_run} has no scores for {', '.join(missing)}; "
                               "no drift bounds there")


def _add_stage_rows(report: dict, results: list[StageResult]) -> None:
    """Statistics of the validation stages in report.json ``stages`` (the report was built before they ran)."""
    for result in results:
        s = result.stats
        row = next((r for r in report["stages"] if r["name"] == s.name), None)
        if row is None:
            report["stages"].append({"name": s.name, "computed": s.computed, "reused": s.reused, "failed": s.failed,
                                     "seconds": round(s.seconds, 3)})
        else:
            for key in ("computed", "reused", "failed"):
                row[key] += getattr(s, key)
            row["seconds"] = round(row["seconds"] + s.seconds, 3)


def write_data_docs(archive: np.ndarray, out_dir: str) -> str:
    """Unpack the stored Data Docs site to ``<out_dir>/data_docs`` (replacing an older one); its index.html,
    relative to ``out_dir``."""
    import io
    target = os.path.join(out_dir, DOCS_DIR)
    staging = f"{target}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(archive.tobytes())) as z:
        z.extractall(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return f"{DOCS_DIR}/index.html"
