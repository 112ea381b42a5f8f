"""After a calibration run: compute (or reuse) the ``decision_thresholds`` items and export thresholds.json."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from stores.runs import RunSession, new_run_id
from tasks.decisions.stage import Calibration, calibrate_categories
from tasks.decisions.thresholds_file import FORMAT, VERSION, write_thresholds
from tasks.engine.context import RunContext

DECISION = "fail when score > threshold"
SCORE = ("the image score of report.json computed without normalisation (normalise=none: the maximum of the "
         "raw anomaly map), so that it does not depend on the other images of a run")
EVALUATION_STAGES = ("category_evaluation", "loco_evaluation")


def _evaluations(ctx: RunContext, run_id: str) -> list[str]:
    """The evaluation artifacts the calibration run read its image scores from (its run record names them)."""
    try:
        named = ctx.store.run_info(run_id).artifacts
    except KeyError:
        return []
    return sorted(p for p in named if p.split("/", 1)[0] in EVALUATION_STAGES)


def payload(report: dict[str, Any], calibration: Calibration, target_frr: float, ctx: RunContext,
            evaluations: list[str], report_path: str) -> dict[str, Any]:
    """thresholds.json's content (schema in tasks.decisions.thresholds_file)."""
    notes = []
    if any(c.rule == "f1_max" for c in calibration.thresholds.values()):
        notes.append("categories with good and anomalous images use the F1-max threshold of their image scores, "
                     "not the target FRR")
    if any(i["label"] is None for i in report["images"]):
        notes.append("unlabelled images were taken as good")
    dataset = report["dataset"]
    return {
        "format": FORMAT, "version": VERSION,
        "method": report["method"], "config": report["config"], "models": report["models"],
        "stand_in_models": report["stand_in_models"], "warning": report.get("warning"),
        "dataset": {k: dataset.get(k) for k in ("kind", "root", "split", "categories")},
        "decision": DECISION, "score": SCORE, "target_frr": target_frr,
        "artifact": {"store": ctx.store_url, "stage": calibration.ref.stage if calibration.ref else None,
                     "key": calibration.ref.key if calibration.ref else None},
        "evaluation": evaluations,
        "calibration_run": report["run_id"], "calibration_report": report_path,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "categories": {cat: {**dataclasses.asdict(t), "item": calibration.items[cat]}
                       for cat, t in sorted(calibration.thresholds.items())},
        "skipped": dict(sorted(calibration.skipped.items())),
        "notes": notes,
    }


def export_thresholds(ctx: RunContext, outcome: dict[str, Any], target_frr: float, path: str) -> dict[str, Any]:
    """Thresholds of the calibration run ``outcome`` (a method flow's return) written to ``path``.

    The stage runs under a run record of its own (the calibration run's record is closed by then).
    Returns {"path", "payload", "stats": StageStats | None}; ReportError when the file cannot be written."""
    from tasks.report.finish import ReportError

    report = outcome["report_data"]
    stage_ctx = dataclasses.replace(ctx, run_id=new_run_id())
    run = RunSession(stage_ctx.store, stage_ctx.run_id, {"method": f"calibrate:{report['method']}",
                                                         "calibration_run": report["run_id"]})
    try:
        calibration = calibrate_categories(stage_ctx, report["images"], report["dataset"]["root"], target_frr)
    except BaseException as exc:
        run.stop("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    run.stop("complete")
    content = payload(report, calibration, target_frr, ctx, _evaluations(ctx, report["run_id"]), outcome["report"])
    if not calibration.thresholds:
        return {"path": None, "payload": content, "stats": calibration.stats}
    try:
        write_thresholds(path, content)
    except OSError as exc:
        raise ReportError(f"could not write the thresholds to {path}: {exc.strerror or exc}. The thresholds are "
                          f"kept in store {ctx.store_url} ({calibration.ref.path}); rerun the same command to "
                          "export them without recomputing.") from None
    return {"path": path, "payload": content, "stats": calibration.stats}
