"""`anomflow run METHOD ...` and `anomflow demo`: set up a run, call the method's flow, print a summary."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from flows.cli.preflight import (UsageError, check_dask, check_dir_target, check_inputs, check_outputs, local_path,
                                 open_store)
from flows.cli.post_options import check_post_options, post_options
from flows.cli.summary import print_summary

DEFAULT_STORE = os.environ.get("ANOMFLOW_STORE", str(Path.home() / ".cache" / "anomflow" / "store"))
DEFAULT_ABLATE_OUT = "anomflow-out/ablation"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_VALIDATION = 0, 1, 2, 3, 4

# Options shared by `run` and `ablate` (typer reads these markers as defaults; one definition each).
DATASET = typer.Option(..., "--dataset", help="mvtec | visa | loco | digitanatomy | folder")
ROOT = typer.Option(..., "--root", help="dataset root folder")
CATEGORY = typer.Option(None, "--category", help="restrict to these categories (repeat)")
STORE = typer.Option(DEFAULT_STORE, "--store", help="Zarr store: a local path or any fsspec URL")
OVERRIDES = typer.Option(None, "--set", help="config override key=value (repeat)")
MODELS_DIR = typer.Option(None, "--models-dir", help="weights folder [$ANOMFLOW_MODELS_DIR]")
RANDOM_WEIGHTS = typer.Option(False, "--random-weights",
                              help="official architectures, seeded random weights (benchmarks)")
ALLOW_TINY = typer.Option(False, "--allow-tiny", help="use tiny-* stand-ins for absent official weights")
BATCH_SIZE = typer.Option(None, "--batch-size", help="images per model batch")
DEVICE = typer.Option("cpu", "--device", help="torch device, e.g. cuda")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="progress bars on long stages")
DASK_ADDRESS = typer.Option(None, "--dask-address",
                            help="run stage batches on the Dask cluster of this scheduler, e.g. tcp://HOST:8786")
WORKERS = typer.Option(None, "--workers", help="run stage batches on a local Dask cluster of N worker processes")
DASK_RESOURCES = typer.Option(None, "--dask-resources",
                              help="Dask resources a batch that runs a model needs, e.g. GPU=1 (repeat)")
THRESHOLDS = typer.Option(None, "--thresholds", help="thresholds.json from `anomflow calibrate`: pass/fail "
                          "decisions per image (decisions.parquet/csv)")
BASELINE = typer.Option(None, "--baseline", help="run id whose per-category score distributions bound drift")
FAIL_ON_VALIDATION = typer.Option(False, "--fail-on-validation", help="exit 4 when an expectation fails")
VALIDATION = typer.Option(True, "--validation/--no-validation", help="validate inputs, outputs and metrics "
                          "with Great Expectations")
METRIC_FLOORS = typer.Option(None, "--metric-floor", help="metric floor, e.g. image_auroc=0.7 (repeat)")
EXPECTED_COUNTS = typer.Option(None, "--expected-counts", help="YAML/JSON {category: {split: count}}")
ALERT_WEBHOOK = typer.Option(None, "--alert-webhook", help="POST a JSON summary here on failed validation or a "
                             "high anomaly rate")
ALERT_RATE = typer.Option(None, "--alert-anomaly-rate", help="alert when more than this share of images fail")


def fail_usage(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE)


def execute(method: str, dataset: str, root: str, categories: list[str] | None, store: str, out: str,
            overrides: list[str], models_dir: str | None, save_maps: str | None, random_weights: bool,
            allow_tiny: bool, batch_size: int | None, device: str, progress: bool,
            flow_override: Any = None, dask_address: str | None = None, workers: int | None = None,
            dask_resources: list[str] | None = None, post: Any = None) -> dict[str, Any]:
    """Validate everything a user can get wrong before any work starts, then run the flow.

    dask_address / workers / dask_resources: run stage batches on a Dask cluster (``tasks.engine.distributed``);
    the cluster is connected (or a local one started) after the other checks, and the report names it.
    post: :class:`tasks.report.post_run.PostRunOptions` (decisions, validation, alerts); checked here too."""
    from flows.cli.prefect_server import choose_prefect_api, flow_run_settings
    from flows.cli.startup import imports_without_gc

    dataset = dataset.strip().lower()
    with imports_without_gc():
        api_note = choose_prefect_api()   # before Prefect is imported: its settings are read on import
        from flows.methods import METHODS, method_entry
        from tasks.config import ConfigError, apply_overrides
        from tasks.datasets.records import DatasetError
        from tasks.engine.context import RunContext
        from tasks.engine.run_state import DatasetSpec
        from tasks.models.registry import default_models_dir
        from tasks.models.resolve import resolve_models
        from tasks.models.weights import WeightsMissingError
        from stores.runs import stop_session
        from tasks.report.finish import ReportError
        from tasks.saa_plus.expert import ExpertError

        if method not in METHODS:
            fail_usage(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
        config_cls, flow_fn = method_entry(method)
        import prefect.flow_engine   # noqa: F401  (the flow call imports it; here, without the collector)
    flow_fn = flow_override or flow_fn
    models_dir = str(models_dir or default_models_dir())
    try:
        config = apply_overrides(config_cls(), overrides)
        if batch_size:
            config = config.model_copy(update={"batch_size": batch_size})
        config, notes = resolve_models(config, models_dir, allow_tiny, random_weights)
    except (ConfigError, KeyError) as exc:
        fail_usage(str(exc).strip("'\""))
    try:
        cluster, resources = check_dask(dask_address, workers, dask_resources, store)
        check_outputs(store, out, save_maps, create_parents=frozenset({DEFAULT_STORE, DEFAULT_ABLATE_OUT}))
        check_inputs(config, dataset, root, categories)
        open_store(store)
        if post is not None:
            check_post_options(post, store, method)
    except UsageError as exc:
        fail_usage(str(exc))
    for note in notes + ([api_note] if api_note else []):
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if cluster is not None:   # workers do not share the driver's working directory: ship absolute paths
        store = local_path(store) or store
        models_dir = os.path.abspath(os.path.expanduser(models_dir))
    ctx = RunContext(store_url=store, models_dir=models_dir, dataset_root=os.path.abspath(root),
                     random_weights=random_weights, device=device, batch_size=config.batch_size, progress=progress,
                     dask_address=cluster, model_resources=resources, **({"post": post} if post else {}))
    if cluster is not None:
        _connect_cluster(ctx, dask_address)
    spec = DatasetSpec(dataset, os.path.abspath(root), tuple(categories) if categories else None)
    try:
        with flow_run_settings():
            return flow_fn(config=config, ctx=ctx, dataset=spec, out_dir=out, save_maps_dir=save_maps)
    except (DatasetError, WeightsMissingError, ExpertError) as exc:
        stop_session(ctx.run_id, "failed", error=str(exc))
        fail_usage(str(exc))
    except ReportError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_ERROR)
    except BaseException as exc:
        stop_session(ctx.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise


def use_prefect_api() -> None:
    """Pick the Prefect API (``flows.cli.prefect_server``) and print its note. A command that imports its flow
    before calling :func:`execute` calls this first: once Prefect is imported, its settings are fixed and the
    choice falls back to a per-process server."""
    from flows.cli.prefect_server import choose_prefect_api

    note = choose_prefect_api()
    if note:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


def _connect_cluster(ctx: Any, option_address: str | None) -> None:
    """Connect to the cluster (or start the local one) now, so that a wrong address is a usage error."""
    from tasks.engine.distributed import DaskSetupError

    try:
        described = ctx.executor.describe()
    except DaskSetupError as exc:
        fail_usage(f"--dask-address {option_address}: {exc}" if option_address else f"--workers: {exc}")
    typer.secho(f"note: stage batches run on Dask ({described['address']}, {described['workers']} workers)",
                fg=typer.colors.YELLOW, err=True)


def run(
    method: str = typer.Argument(..., help="method to run: saa | saa-plus | sam-lad"),
    dataset: str = DATASET,
    root: str = ROOT,
    category: Optional[list[str]] = CATEGORY,
    store: str = STORE,
    out: str = typer.Option("anomflow-out", "--out", help="folder for report.json and report.html"),
    overrides: Optional[list[str]] = OVERRIDES,
    models_dir: Optional[str] = MODELS_DIR,
    save_maps: Optional[str] = typer.Option(None, "--save-maps", help="write float32 TIFF maps here"),
    random_weights: bool = RANDOM_WEIGHTS,
    allow_tiny: bool = ALLOW_TINY,
    batch_size: Optional[int] = BATCH_SIZE,
    device: str = DEVICE,
    progress: bool = PROGRESS,
    dask_address: Optional[str] = DASK_ADDRESS,
    workers: Optional[int] = WORKERS,
    dask_resources: Optional[list[str]] = DASK_RESOURCES,
    thresholds: Optional[str] = THRESHOLDS,
    baseline: Optional[str] = BASELINE,
    fail_on_validation: bool = FAIL_ON_VALIDATION,
    validation: bool = VALIDATION,
    metric_floor: Optional[list[str]] = METRIC_FLOORS,
    expected_counts: Optional[str] = EXPECTED_COUNTS,
    alert_webhook: Optional[str] = ALERT_WEBHOOK,
    alert_anomaly_rate: Optional[float] = ALERT_RATE,
) -> None:
    """Run METHOD on a dataset; writes report.json/html to --out. Exit 0 ok, 3 some items failed, 2 usage,
    4 an expectation failed with --fail-on-validation."""
    try:
        post = post_options(thresholds, baseline, fail_on_validation, validation, metric_floor or [], expected_counts,
                            alert_webhook, alert_anomaly_rate)
    except UsageError as exc:
        fail_usage(str(exc))
    outcome = execute(method, dataset, root, category, store, out, overrides or [], models_dir, save_maps,
                      random_weights, allow_tiny, batch_size, device, progress and sys.stderr.isatty(),
                      dask_address=dask_address, workers=workers, dask_resources=dask_resources, post=post)
    print_summary(outcome["report_data"], outcome["report"])
    raise typer.Exit(outcome["exit_code"])


def demo(
    out: str = typer.Option("demo-out", "--out", help="folder for the synthetic data, the store and the report"),
    models_dir: Optional[str] = MODELS_DIR,
    images: int = typer.Option(8, "--images", help="test images per category"),
) -> None:
    """Synthesise a small MVTec-layout dataset, run SAA on it (official weights if present, else tiny), summarise."""
    from tasks.datasets.synth import write_synthetic_mvtec

    try:
        check_dir_target(os.path.abspath(out), "--out", create_parents=True)
    except UsageError as exc:
        fail_usage(str(exc))
    data = os.path.join(out, "data")
    if not os.path.isdir(data):
        write_synthetic_mvtec(data, categories=3, images=images, seed=0)
    outcome = execute("saa", "mvtec", data, None, os.path.join(out, "store"), os.path.join(out, "report"), [],
                      models_dir, os.path.join(out, "maps"), False, True, None, "cpu", sys.stderr.isatty())
    print_summary(outcome["report_data"], outcome["report"])
    raise typer.Exit(outcome["exit_code"])


def ablate(
    method: str = typer.Argument(..., help="method to ablate: saa-plus"),
    dataset: str = DATASET,
    root: str = ROOT,
    category: Optional[list[str]] = CATEGORY,
    store: str = STORE,
    out: str = typer.Option(DEFAULT_ABLATE_OUT, "--out", help="folder for ablation.md/json and each variant"),
    overrides: Optional[list[str]] = OVERRIDES,
    models_dir: Optional[str] = MODELS_DIR,
    variant: Optional[list[str]] = typer.Option(None, "--variant", help="run only these variants (repeat)"),
    random_weights: bool = RANDOM_WEIGHTS,
    allow_tiny: bool = ALLOW_TINY,
    batch_size: Optional[int] = BATCH_SIZE,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Run the paper's Table 2 variants (vanilla SAA, SAA+, and SAA+ without each prompt kind) on one cache."""
    from functools import partial

    use_prefect_api()
    from flows.ablate import ablate_saa_plus_flow
    from tasks.saa_plus.ablation import VARIANTS

    if method != "saa-plus":
        fail_usage(f"ablate knows saa-plus only, not {method!r}")
    unknown = sorted(set(variant or []) - set(VARIANTS))
    if unknown:
        fail_usage(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    flow_fn = partial(ablate_saa_plus_flow, variants=list(variant or VARIANTS))
    outcome = execute(method, dataset, root, category, store, out, overrides or [], models_dir, None,
                      random_weights, allow_tiny, batch_size, device, progress and sys.stderr.isatty(), flow_fn)
    with open(os.path.join(out, "ablation.md"), encoding="utf-8") as fh:
        typer.echo(fh.read())
    typer.echo(f"ablation: {outcome['report']}")
    raise typer.Exit(outcome["exit_code"])
