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
from flows.cli.calibrate_cmd import calibrate, calibrate_areas  # noqa: E402
from flows.cli.models_cmd import models_app  # noqa: E402
from flows.cli.store_cmd import store_app  # noqa: E402

app = typer.Typer(help="anomflow: zero-shot anomaly segmentation as cached Prefect flows.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command("run")(run_cmd.run)
app.command("demo")(run_cmd.demo)
app.command("ablate")(run_cmd.ablate)
app.command("calibrate")(calibrate)
app.command("calibrate-areas")(calibrate_areas)
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")


SYNTH_LAYOUTS = ("mvtec", "loco", "digitanatomy", "digitanatomy-train")
# option -> the layouts it applies to (anything else refuses it, so a typo in intent is not silently ignored)
_SYNTH_OPTION_LAYOUTS = {"--categories": ("mvtec", "loco"), "--size": ("mvtec",), "--train": ("loco", "digitanatomy"),
                         "--validation": ("loco",), "--width": ("loco",), "--height": ("loco",)}


@app.command("synth")
def synth(
    out: str = typer.Option(..., "--out", help="folder to write the dataset into"),
    layout: str = typer.Option("mvtec", "--layout", help="mvtec | loco | digitanatomy | digitanatomy-train "
                               "(the last writes train/good of an existing DigitAnatomy folder from its MNIST/*.npy)"),
    categories: int = typer.Option(None, "--categories", help="number of categories (mvtec: 3, loco: 2)"),
    images: int = typer.Option(None, "--images", help="mvtec: test images per category (train/good gets as many), "
                               "default 8; loco: images in each test folder, default 8 (at least 5); "
                               "digitanatomy: images in test/normal and in test/abnormal, default 8; "
                               "digitanatomy-train: training images, default 1000"),
    seed: int = typer.Option(0, "--seed", help="random seed; same seed, same bytes"),
    size: int = typer.Option(None, "--size", help="mvtec: image side in pixels (default 128)"),
    train: int = typer.Option(None, "--train", help="training normals (loco: per category, default 8; "
                              "digitanatomy: default 100)"),
    validation: int = typer.Option(None, "--validation", help="loco: validation normals per category (default 2)"),
    width: int = typer.Option(None, "--width", help="loco: image width in pixels (default 160)"),
    height: int = typer.Option(None, "--height", help="loco: image height in pixels (default 128)"),
) -> None:
    """Write a synthetic dataset: MVTec AD layout with planted defects (scratch, hole, stain, missing piece), MVTec
    LOCO layout with logical and structural anomalies, or DigitAnatomy (SQUID layout) from scikit-learn's digits."""
    key = layout.strip().lower()
    if key not in SYNTH_LAYOUTS:
        raise typer.BadParameter(f"unknown layout {layout!r}; expected one of {', '.join(SYNTH_LAYOUTS)}",
                                 param_hint="--layout")
    given = {"--categories": categories, "--size": size, "--train": train, "--validation": validation,
             "--width": width, "--height": height}
    for option, value in given.items():
        if value is not None and key not in _SYNTH_OPTION_LAYOUTS[option]:
            raise typer.BadParameter(f"applies to --layout {' / '.join(_SYNTH_OPTION_LAYOUTS[option])} only, "
                                     f"not {key}", param_hint=option)
    try:
        if key == "mvtec":
            from tasks.datasets.synth import write_synthetic_mvtec

            names = write_synthetic_mvtec(out, categories=3 if categories is None else categories,
                                          images=8 if images is None else images, seed=seed,
                                          size=128 if size is None else size)
            typer.echo(f"wrote {len(names)} categories to {out}: {', '.join(names)}")
        elif key == "loco":
            from tasks.datasets.synth_loco import write_synthetic_loco

            names = write_synthetic_loco(out, categories=2 if categories is None else categories,
                                         train=8 if train is None else train,
                                         validation=2 if validation is None else validation,
                                         test=8 if images is None else images, seed=seed,
                                         size=(160 if width is None else width, 128 if height is None else height))
            typer.echo(f"wrote {len(names)} LOCO categories to {out}: {', '.join(names)}")
        elif key == "digitanatomy":
            from tasks.datasets.synth_digits import write_synthetic_digitanatomy

            kinds = write_synthetic_digitanatomy(out, test=8 if images is None else images,
                                                 train=100 if train is None else train, seed=seed)
            typer.echo(f"wrote DigitAnatomy to {out}/digitanatomy: {len(kinds)} test images")
        else:
            from tasks.datasets.digitanatomy import write_digitanatomy_train

            written = write_digitanatomy_train(out, count=1000 if images is None else images, seed=seed)
            typer.echo(f"wrote {len(written)} DigitAnatomy training normals to {out}/digitanatomy/train/good")
    except (ValueError, FileExistsError) as exc:   # DatasetError is a ValueError
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
