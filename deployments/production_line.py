"""Scheduled batch runs on a production line: a Prefect deployment of a method's flow over a folder.

    python -m deployments.production_line --root /line/incoming --cron "*/30 * * * *" --store s3://bucket/anomflow

Each run scores the folder's images; images seen before cost nothing (their artifacts are in the store),
so a folder that grows through the day only computes what is new. Needs a Prefect API to serve against
(``prefect server start``, or Prefect Cloud); ``--print`` shows the deployment without serving it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from flows.methods import method_entry
from tasks.config import apply_overrides
from tasks.engine.context import RunContext
from tasks.engine.run_state import DatasetSpec
from tasks.models.registry import default_models_dir


def build_deployment(method: str, root: str, cron: str, store: str, out: str, overrides: list[str],
                     models_dir: str | None = None, name: str | None = None):
    """A RunnerDeployment of ``method`` over the folder ``root`` on the given cron schedule."""
    config_cls, flow_fn = method_entry(method)
    config = apply_overrides(config_cls(), overrides)
    ctx = RunContext(store_url=store, models_dir=str(models_dir or default_models_dir()),
                     dataset_root=os.path.abspath(root), batch_size=config.batch_size, progress=False,
                     run_id="")   # each scheduled run takes a fresh run id (overlapping runs must not share one)
    params = {"config": config, "ctx": ctx, "dataset": DatasetSpec("folder", os.path.abspath(root)), "out_dir": out}
    return flow_fn.to_deployment(name=name or f"{method}-{Path(root).name}", cron=cron, parameters=params,
                                 tags=["anomflow", method, "production-line"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="saa")
    ap.add_argument("--root", required=True, help="folder the line drops images into")
    ap.add_argument("--cron", default="0 * * * *")
    ap.add_argument("--store", default=str(Path.home() / ".cache" / "anomflow" / "store"))
    ap.add_argument("--out", default="anomflow-out/line", help="report folder (overwritten by each run)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--models-dir")
    ap.add_argument("--print", action="store_true", help="show the deployment and exit")
    args = ap.parse_args()
    deployment = build_deployment(args.method, args.root, args.cron, args.store, args.out, args.overrides,
                                  args.models_dir)
    if args.print:
        print(deployment.name, deployment.schedules, sorted(deployment.parameters))
        return
    from prefect import serve

    serve(deployment)


if __name__ == "__main__":
    main()
