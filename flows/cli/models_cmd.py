"""``anomflow models ...``: list registered models and their weight files, pull them, import local copies.

Exit codes: 0 success, 1 verification or download failure, 2 usage error (unknown model, bad path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tasks.models import registry, weights

models_app = typer.Typer(
    help="Model weights: list what is registered and present, pull official weights, import local files.",
    no_args_is_help=True,
)

ModelsDirOpt = Annotated[Optional[Path], typer.Option(
    "--models-dir", help="Where weights live (default: $ANOMFLOW_MODELS_DIR or ~/.cache/anomflow/models).",
    file_okay=False)]


def _models_dir(models_dir: Path | None) -> Path:
    return Path(models_dir).expanduser() if models_dir is not None else registry.default_models_dir()


def _spec_or_exit(name: str) -> registry.ModelSpec:
    try:
        return registry.get_spec(name)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _file_status(st: weights.FileStatus, name: str) -> str:
    if st.verified:
        return "present (verified)"
    if st.present:
        return "present (not verified yet)"
    return f"MISSING -> anomflow models pull {name}"


@models_app.command("list")
def list_cmd(models_dir: ModelsDirOpt = None) -> None:
    """Every registered model (architecture and weight tag) with its files, expected sha256 and status on disk."""
    mdir = _models_dir(models_dir)
    typer.echo(f"models dir: {mdir.absolute()}")
    typer.echo("a model is also reachable as ARCH:TAG (e.g. wrn50-2:tv_in1k)")
    rows = [("MODEL", "ARCH", "TAG", "FAMILY", "KIND", "FILE", "EXPECTED SHA256", "STATUS")]
    for name in sorted(registry.MODEL_SPECS):
        spec = registry.MODEL_SPECS[name]
        kind = "tiny" if spec.tiny else "official"
        model = (name, spec.architecture, spec.tag or "-", spec.family, kind)
        if not spec.files:
            rows.append((*model, "-", "-", "built from seed (tiny)"))
            continue
        for i, st in enumerate(weights.file_statuses(spec, mdir)):
            head = model if i == 0 else ("",) * len(model)
            rows.append((*head, st.filename, st.expected_sha256 or "not pinned", _file_status(st, name)))
    typer.echo(_table(rows))


@models_app.command("pull")
def pull_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name (see `anomflow models list`).")],
    models_dir: ModelsDirOpt = None,
    mirror: Annotated[Optional[str], typer.Option(
        "--mirror", envvar=weights.MIRROR_ENV,
        help="Base URL that replaces everything before the filename in the download URLs.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Download (resumably) and verify the weight files of NAME. The only command that uses the network."""
    spec = _spec_or_exit(name)
    mdir = _models_dir(models_dir)
    name = spec.name  # ARCH:TAG -> the registered name (whose directory holds the files)
    if spec.tiny:
        typer.echo(f"{name} is a tiny model built from seed {spec.seed}; nothing to pull.")
        return
    from tasks.models import pull   # httpx + tqdm: only this command downloads

    try:
        paths = pull.pull(name, mdir, mirror=mirror, progress=progress)
    except weights.WeightsVerificationError as exc:
        typer.echo(f"verification failed: {exc}", err=True)
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for path in paths:
        typer.echo(f"ok  {path}")


@models_app.command("import")
def import_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name (see `anomflow models list`).")],
    path: Annotated[Path, typer.Argument(help="A weight file, or a directory holding the model's files.")],
    models_dir: ModelsDirOpt = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", help="Which of the model's files PATH is (default: match by basename).")] = None,
) -> None:
    """Copy local weight file(s) for NAME into the models dir after verifying them; PATH is left untouched."""
    spec = _spec_or_exit(name)
    mdir = _models_dir(models_dir)
    try:
        paths = weights.import_file(name, path, mdir, filename=file)
    except weights.WeightsVerificationError as exc:
        typer.echo(f"verification failed: {exc}", err=True)
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for p in paths:
        typer.echo(f"ok  {p}")
    missing = [st.filename for st in weights.file_statuses(spec, mdir) if not st.present]
    if missing:
        typer.echo(f"still missing for {name}: {', '.join(missing)}")
