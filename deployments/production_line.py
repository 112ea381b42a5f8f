"""Scheduled batch runs on a production line: a method's flow over a folder, served on a cron schedule.

    export PREFECT_API_URL=http://127.0.0.1:4200/api        # `prefect server start` (SQLite, or PostgreSQL)
    python -m deployments.production_line --root /line/incoming --cron "*/30 * * * *" --out /line/reports \\
        --thresholds thresholds.json --alert-webhook https://hooks.example/line --alert-anomaly-rate 0.05

Each run scores every image in the folder; images seen before cost nothing (their artifacts are in the store), so
a folder that grows through the day computes only what is new, and images that arrive during a run are scored by
the next one. Each run writes its report (and decisions) to ``<out>/<run id>/``; ``<out>/latest`` (a symlink) and
``<out>/latest.json`` point at the newest, and ``<out>/history.jsonl`` gets one line per run.

Runs of the deployment never overlap: it has a Prefect deployment concurrency limit of 1, and a run that comes
due while another is running waits for the slot (``--on-overlap enqueue``, the default) or is cancelled
(``cancel``). The store's claims would stop two overlapping runs computing the same item in any case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.states import Failed

from flows.methods import METHODS, method_entry
from tasks.config import apply_overrides
from tasks.engine.context import RunContext
from tasks.engine.flow import method_flow
from tasks.engine.run_state import DatasetSpec
from tasks.models.registry import default_models_dir
from tasks.models.resolve import resolve_models
from tasks.report.post_run import EXIT_VALIDATION, PostRunOptions

ON_OVERLAP = {"enqueue": ConcurrencyLimitStrategy.ENQUEUE, "cancel": ConcurrencyLimitStrategy.CANCEL_NEW}


@method_flow(name="production-line", persist_result=False)
def production_line_flow(method: str, config: dict[str, Any], ctx: RunContext, root: str, out: str) -> dict:
    """One scheduled run: ``method`` (its config as JSON) over the folder ``root``, report in ``<out>/<run id>``.

    Returns {run_id, report, exit_code, images, failures}; the flow run is Failed when validation failed and
    ``ctx.post.fail_on_validation`` is set (the report and the pointers are written first)."""
    from stores.runs import stop_session

    config_cls, flow_fn = method_entry(method)
    ctx = ctx.started()
    run_dir = os.path.join(out, ctx.run_id)
    try:
        outcome = flow_fn(config=config_cls.model_validate(config), ctx=ctx, dataset=DatasetSpec("folder", root),
                          out_dir=run_dir)
    except BaseException as exc:
        stop_session(ctx.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    report = outcome["report_data"]
    summary = {"run_id": ctx.run_id, "report": outcome["report"], "exit_code": outcome["exit_code"],
               "images": len(report["images"]), "failures": len(report["failures"])}
    record_run(out, summary, report)
    if outcome["exit_code"] == EXIT_VALIDATION:
        return Failed(message=f"validation failed (--fail-on-validation); report {outcome['report']}", data=summary)
    return summary


def record_run(out: str, summary: dict, report: dict) -> None:
    """Point ``<out>/latest`` and ``<out>/latest.json`` at this run and append it to ``<out>/history.jsonl``."""
    decisions, validation, alerts = (report.get(k) for k in ("decisions", "validation", "alerts"))
    entry = {**summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "report_html": os.path.join(os.path.dirname(summary["report"]), "report.html"),
             "decisions": decisions["files"] if decisions else None,
             "anomaly_rate": decisions["anomaly_rate"] if decisions else None,
             "validation_success": validation["success"] if validation else None,
             "alert_sent": alerts["sent"] if alerts else None}
    tmp = os.path.join(out, f".latest.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(entry, fh, indent=2)
    os.replace(tmp, os.path.join(out, "latest.json"))
    os.symlink(summary["run_id"], tmp)   # relative: the folder can move
    os.replace(tmp, os.path.join(out, "latest"))
    with open(os.path.join(out, "history.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def build_deployment(method: str, root: str, cron: str, store: str, out: str, overrides: list[str],
                     models_dir: str | None = None, name: str | None = None, post: PostRunOptions | None = None,
                     allow_tiny: bool = False, on_overlap: str = "enqueue"):
    """A RunnerDeployment of :func:`production_line_flow` for ``method`` over the folder ``root`` on ``cron``.

    The method's config is validated here (``ConfigError`` names a bad key); absent official weights are swapped
    for their tiny stand-ins only with ``allow_tiny``. ``post``: decisions, validation and alerts of every run."""
    config_cls, _ = method_entry(method)
    models_dir = os.path.abspath(os.path.expanduser(str(models_dir or default_models_dir())))
    config, _notes = resolve_models(apply_overrides(config_cls(), overrides), models_dir, allow_tiny, False)
    root, out = os.path.abspath(root), os.path.abspath(out)
    ctx = RunContext(store_url=store, models_dir=models_dir, dataset_root=root, batch_size=config.batch_size,
                     progress=False, post=post or PostRunOptions(),
                     run_id="")   # each scheduled run takes a fresh run id (and its own report folder)
    params = {"method": method, "config": config.model_dump(mode="json"), "ctx": ctx, "root": root, "out": out}
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ON_OVERLAP[on_overlap])
    return production_line_flow.to_deployment(name=name or f"{method}-{Path(root).name}", cron=cron,
                                              parameters=params, concurrency_limit=limit,
                                              tags=["anomflow", method, "production-line"])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="saa", choices=sorted(METHODS))
    ap.add_argument("--root", required=True, help="folder the line drops images into (subfolders = categories)")
    ap.add_argument("--cron", default="0 * * * *", help="when runs come due (cron, the server's time zone: UTC)")
    ap.add_argument("--store", default=os.environ.get("ANOMFLOW_STORE",
                                                      str(Path.home() / ".cache" / "anomflow" / "store")))
    ap.add_argument("--out", default="anomflow-out/line", help="reports: <out>/<run id>/, <out>/latest")
    ap.add_argument("--name", help="deployment name (default METHOD-FOLDERNAME)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--models-dir")
    ap.add_argument("--allow-tiny", action="store_true", help="tiny-* stand-ins for absent official weights")
    ap.add_argument("--on-overlap", choices=sorted(ON_OVERLAP), default="enqueue",
                    help="a run that comes due while one is running: wait for it (enqueue) or cancel")
    ap.add_argument("--thresholds", help="thresholds.json from `anomflow calibrate`: pass/fail per image")
    ap.add_argument("--baseline", help="run id whose score distributions bound drift")
    ap.add_argument("--fail-on-validation", action="store_true", help="a failed expectation fails the flow run")
    ap.add_argument("--no-validation", dest="validation", action="store_false")
    ap.add_argument("--metric-floor", action="append", default=[], help="e.g. image_auroc=0.7 (repeat)")
    ap.add_argument("--expected-counts", help="YAML/JSON {category: {split: count}}")
    ap.add_argument("--alert-webhook", help="POST a JSON summary here on failed validation or a high anomaly rate")
    ap.add_argument("--alert-anomaly-rate", type=float, help="alert when more than this share of images fail")
    ap.add_argument("--print", action="store_true", help="show the deployment and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Serve the deployment until interrupted; 2 on a usage error (named), before anything is registered."""
    from flows.cli.post_options import check_post_options, post_options
    from flows.cli.preflight import UsageError
    from tasks.config import ConfigError

    args = _parser().parse_args(argv)
    try:
        if not os.path.isdir(args.root):
            raise UsageError(f"--root {args.root}: no such folder")
        post = post_options(args.thresholds, args.baseline, args.fail_on_validation, args.validation,
                            args.metric_floor, args.expected_counts, args.alert_webhook, args.alert_anomaly_rate)
        check_post_options(post, args.store, args.method)
        os.makedirs(args.out, exist_ok=True)
        deployment = build_deployment(args.method, args.root, args.cron, args.store, args.out, args.overrides,
                                      args.models_dir, args.name, post, args.allow_tiny, args.on_overlap)
    except (UsageError, ConfigError, KeyError, OSError) as exc:
        print(f"error: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    if args.print:
        print(deployment.name, deployment.schedules, sorted(deployment.parameters))
        return 0
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set: serve against a Prefect server (`prefect server start`, then "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api)", file=sys.stderr)
        return 2
    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
