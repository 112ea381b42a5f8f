"""The `anomflow` command line."""
from __future__ import annotations

import os

import typer

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")   # busy 2-core machines

from flows.cli import run_cmd  # noqa: E402
from flows.cli.models_cmd import models_app  # noqa: E402
from flows.cli.store_cmd import store_app  # noqa: E402

app = typer.Typer(help="anomflow: zero-shot anomaly segmentation as cached Prefect flows.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command("run")(run_cmd.run)
app.command("demo")(run_cmd.demo)
app.command("ablate")(run_cmd.ablate)
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")


@app.command("synth")
def synth(
    out: str = typer.Option(..., "--out", help="folder to write the dataset into (MVTec AD layout)"),
    categories: int = typer.Option(3, "--categories", help="number of categories"),
    images: int = typer.Option(8, "--images", help="test images per category (train/good gets as many)"),
    seed: int = typer.Option(0, "--seed", help="random seed; same seed, same bytes"),
    size: int = typer.Option(128, "--size", help="image side in pixels"),
) -> None:
    """Write a synthetic dataset with planted defects (scratch, hole, stain, missing piece)."""
    from tasks.datasets.synth import write_synthetic_mvtec

    names = write_synthetic_mvtec(out, categories=categories, images=images, seed=seed, size=size)
    typer.echo(f"wrote {len(names)} categories to {out}: {', '.join(names)}")


if __name__ == "__main__":
    app()
