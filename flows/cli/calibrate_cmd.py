"""`anomflow calibrate METHOD ...` (decision thresholds) and `anomflow calibrate-areas sam-lad ...` (SAM-LAD's
object area bounds)."""
from __future__ import annotations

import os
import sys
from functools import partial
from typing import Optional

import typer

from flows.cli.run_cmd import ALLOW_TINY, BATCH_SIZE, CATEGORY, DATASET, DEFAULT_STORE as STORE_DEFAULT, DEVICE, \
    MODELS_DIR, OVERRIDES, PROGRESS, RANDOM_WEIGHTS, ROOT, STORE, execute, fail_usage, use_prefect_api

EXIT_OK, EXIT_PARTIAL = 0, 3


def check_calibration(method: str, dataset: str, root: str, categories: list[str] | None, split: str,
                      target_frr: float, out: str, overrides: list[str]) -> list[str]:
    """Usage errors of `calibrate` that `run` does not have; returns the overrides with ``normalise=none``."""
    from flows.cli.preflight import UsageError
    from flows.methods import METHODS, method_entry
    from tasks.datasets import DatasetError, load_dataset

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    if not 0.0 <= target_frr < 1.0:
        raise UsageError(f"--target-frr {target_frr}: a share of good images, at least 0 and below 1")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UsageError(f"--out {out}: is a folder; name the thresholds JSON file to write")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out}: folder {parent} does not exist or is not writable")
    try:
        load_dataset(dataset.strip().lower(), root, list(categories) if categories else None, split)
    except DatasetError as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    for text in overrides:
        key, _, value = text.partition("=")
        if key.strip() == "normalise" and value.strip() != "none":
            raise UsageError(f"--set {text}: thresholds are calibrated on un-normalised scores (normalise=none); "
                             "a run with category min-max gets them mapped into its scores")
    if "normalise" in method_entry(method)[0].model_fields:
        return [*overrides, "normalise=none"]
    return list(overrides)


def report_dir_for(out: str) -> str:
    """Where the calibration run's report goes by default: ``<out without .json>-calibration/`` beside it."""
    stem = out[:-5] if out.endswith(".json") else out
    return f"{stem}-calibration"


def calibrate(
    method: str = typer.Argument(..., help="method whose image scores to calibrate: saa | saa-plus | sam-lad"),
    dataset: str = DATASET,
    root: str = ROOT,
    category: Optional[list[str]] = CATEGORY,
    split: str = typer.Option("train", "--split", help="the images to calibrate on: train (train/good, "
                              "known-good) or test (labelled: F1-max thresholds); loco also has validation"),
    target_frr: float = typer.Option(0.01, "--target-frr", help="largest share of good images that may fail, "
                                     "in [0, 1)"),
    out: str = typer.Option(..., "--out", help="thresholds JSON to write (use it: anomflow run --thresholds)"),
    report_dir: Optional[str] = typer.Option(None, "--report", help="folder for the calibration run's "
                                             "report.json/html [default: <out>-calibration]"),
    store: str = STORE,
    overrides: Optional[list[str]] = OVERRIDES,
    models_dir: Optional[str] = MODELS_DIR,
    random_weights: bool = RANDOM_WEIGHTS,
    allow_tiny: bool = ALLOW_TINY,
    batch_size: Optional[int] = BATCH_SIZE,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Per-category pass/fail thresholds (fail when score > threshold) for a target false-reject rate on
    known-good images, or F1-max where a category has labelled anomalies. Exit 0 ok, 3 some images or
    categories failed, 2 usage."""
    use_prefect_api()
    from flows.calibrate_thresholds import calibrate_thresholds_flow
    from flows.cli.preflight import UsageError
    from tasks.report.post_run import PostRunOptions

    try:
        overrides = check_calibration(method, dataset, root, category, split, target_frr, out, overrides or [])
    except UsageError as exc:
        fail_usage(str(exc))
    flow = partial(calibrate_thresholds_flow, method=method, split=split, target_frr=target_frr,
                   thresholds_out=out)
    outcome = execute(method, dataset, root, category, store, report_dir or report_dir_for(out), overrides,
                      models_dir, None, random_weights, allow_tiny, batch_size, device,
                      progress and sys.stderr.isatty(), flow_override=flow, post=PostRunOptions(validate=False))
    print_calibration(outcome, split, target_frr)
    content = outcome["calibration"]["payload"]
    failed = outcome["report_data"]["failures"] or content["skipped"]
    raise typer.Exit(EXIT_PARTIAL if failed or outcome["calibration"]["path"] is None else EXIT_OK)


def print_calibration(outcome: dict, split: str, target_frr: float) -> None:
    calibration = outcome["calibration"]
    content, stats = calibration["payload"], calibration["stats"]
    if content["stand_in_models"]:
        typer.secho(f"warning: {content['warning']}", fg=typer.colors.YELLOW)
    typer.echo(f"calibrated {content['method']} on {content['dataset']['kind']} {split} (target FRR "
               f"{target_frr:g}; {content['decision']})")
    typer.echo(f"  {'category':<22} {'rule':<11} {'threshold':>12} {'good':>6} {'anomalous':>9} {'FRR':>7}  F1")
    for name, c in content["categories"].items():
        f1 = "-" if c["f1"] is None else f"{c['f1']:.4f}"
        typer.echo(f"  {name:<22} {c['rule']:<11} {c['threshold']:>12.6g} {c['n_good']:>6} "
                   f"{c['n_anomalous']:>9} {c['empirical_frr']:>7.2%}  {f1}")
    for name, reason in content["skipped"].items():
        typer.secho(f"  {name:<22} no threshold: {reason}", fg=typer.colors.RED)
    for failure in outcome["report_data"]["failures"]:
        typer.secho(f"  failed: {failure['path']}: {failure['reason']}", fg=typer.colors.RED)
    for note in content["notes"]:
        typer.echo(f"note: {note}")
    if stats is not None:
        typer.echo(f"decision_thresholds: {stats.computed} computed, {stats.reused} reused "
                   f"({content['artifact']['stage']}/{content['artifact']['key']})")
    typer.echo(f"report: {outcome['report']}")
    if calibration["path"]:
        typer.echo(f"thresholds: {calibration['path']}  (use it: anomflow run {content['method']} ... "
                   f"--thresholds {calibration['path']})")
    else:
        typer.secho("no category could be calibrated: no thresholds file written", fg=typer.colors.RED)


def calibrate_areas(
    method: str = typer.Argument(..., help="method to calibrate: sam-lad (object area bounds)"),
    dataset: str = DATASET,
    root: str = ROOT,
    category: Optional[list[str]] = CATEGORY,
    store: str = STORE,
    out: str = typer.Option(..., "--out", help="YAML object area table to write (use it with --set object_areas=PATH)"),
    expected: Optional[int] = typer.Option(None, "--expected", help="objects per normal image (default: the table's)"),
    overrides: Optional[list[str]] = OVERRIDES,
    models_dir: Optional[str] = MODELS_DIR,
    random_weights: bool = RANDOM_WEIGHTS,
    allow_tiny: bool = ALLOW_TINY,
    device: str = DEVICE,
) -> None:
    """Pick per-category min/max object areas so that normal images yield the expected object count."""
    from flows.cli.preflight import UsageError, check_inputs, check_store, open_store
    from flows.cli.prefect_server import flow_run_settings

    if method != "sam-lad":
        fail_usage(f"calibrate-areas knows sam-lad only, not {method!r}")
    if expected is not None and expected < 1:
        fail_usage(f"--expected {expected}: needs at least 1 object")
    use_prefect_api()
    from flows.calibrate import calibrate_sam_lad_flow
    from tasks.config import ConfigError, apply_overrides
    from tasks.engine.context import RunContext
    from tasks.engine.run_state import DatasetSpec
    from tasks.models.registry import default_models_dir
    from tasks.models.resolve import resolve_models
    from tasks.sam_lad.config import SAMLADConfig

    models_dir = str(models_dir or default_models_dir())
    dataset = dataset.strip().lower()
    try:
        config, notes = resolve_models(apply_overrides(SAMLADConfig(), overrides or []), models_dir, allow_tiny,
                                       random_weights)
        check_inputs(config, dataset, root, category)
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise UsageError(f"--out {out}: folder {parent} does not exist")
        if os.path.isdir(out):
            raise UsageError(f"--out {out}: is a folder; name the YAML file to write")
        check_store(store, store == STORE_DEFAULT)
        open_store(store)
    except (ConfigError, KeyError, UsageError) as exc:
        fail_usage(str(exc).strip("'\""))
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    ctx = RunContext(store_url=store, models_dir=models_dir, dataset_root=os.path.abspath(root),
                     random_weights=random_weights, device=device, batch_size=config.batch_size,
                     progress=sys.stderr.isatty())
    spec = DatasetSpec(dataset, os.path.abspath(root), tuple(category) if category else None, split="train")
    try:
        with flow_run_settings():
            outcome = calibrate_sam_lad_flow(config=config, ctx=ctx, dataset=spec, out_table=out,
                                             expected=expected)
    except ValueError as exc:
        fail_usage(str(exc))
    for r in outcome["categories"]:
        typer.echo(f"  {r.category:<22} areas [{r.rule.min_fraction:.5f}, {r.rule.max_fraction:.5f}]  "
                   f"{r.share_exact:6.1%} of {r.images} normal images give {r.rule.expected_objects} objects  "
                   f"(objects -> images: {r.counts})")
    for path, reason in outcome["failures"].items():
        typer.secho(f"  failed: {path}: {reason}", fg=typer.colors.RED)
    typer.echo(f"table: {outcome['table']}  (use it: --set object_areas={outcome['table']})")
