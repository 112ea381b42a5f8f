"""`anomflow calibrate sam-lad ...`: choose SAM-LAD's object area bounds on normal training images."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from flows.cli.run_cmd import ALLOW_TINY, CATEGORY, DATASET, DEFAULT_STORE as STORE_DEFAULT, DEVICE, MODELS_DIR, \
    OVERRIDES, RANDOM_WEIGHTS, ROOT, STORE, fail_usage


def calibrate(
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
    from flows.cli.prefect_server import choose_prefect_api

    if method != "sam-lad":
        fail_usage(f"calibrate knows sam-lad only, not {method!r}")
    if expected is not None and expected < 1:
        fail_usage(f"--expected {expected}: needs at least 1 object")
    choose_prefect_api()
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
        outcome = calibrate_sam_lad_flow(config=config, ctx=ctx, dataset=spec, out_table=out, expected=expected)
    except ValueError as exc:
        fail_usage(str(exc))
    for r in outcome["categories"]:
        typer.echo(f"  {r.category:<22} areas [{r.rule.min_fraction:.5f}, {r.rule.max_fraction:.5f}]  "
                   f"{r.share_exact:6.1%} of {r.images} normal images give {r.rule.expected_objects} objects  "
                   f"(objects -> images: {r.counts})")
    for path, reason in outcome["failures"].items():
        typer.secho(f"  failed: {path}: {reason}", fg=typer.colors.RED)
    typer.echo(f"table: {outcome['table']}  (use it: --set object_areas={outcome['table']})")
