"""`anomflow store ls|gc`: inspect and prune the artifact store."""
from __future__ import annotations

import json

import typer

from flows.cli.run_cmd import DEFAULT_STORE

store_app = typer.Typer(help="Inspect and prune the artifact store.", no_args_is_help=True)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@store_app.command("ls")
def ls(store: str = typer.Option(DEFAULT_STORE, "--store", help="store URL or path")) -> None:
    """List artifacts: stage, key, parameters, image count, bytes, created."""
    from stores import ArtifactStore
    from stores.maintenance import list_artifacts

    infos = list_artifacts(ArtifactStore(store))
    typer.echo(f"{'stage':<22} {'key':<14} {'items':>6} {'bytes':>9}  {'created':<20}  params")
    for a in sorted(infos, key=lambda a: (a.stage, a.created)):
        params = json.dumps(a.params, separators=(",", ":"))
        typer.echo(f"{a.stage:<22} {a.key[:12]:<14} {a.items:>6} {_human(a.bytes):>9}  {a.created:<20}  "
                   f"{params[:80]}")
    typer.echo(f"{len(infos)} artifacts, {_human(sum(a.bytes for a in infos))}")


@store_app.command("gc")
def gc(
    store: str = typer.Option(DEFAULT_STORE, "--store", help="store URL or path"),
    keep_runs: int = typer.Option(None, "--keep-runs", help="keep only the N most recent run records first"),
    grace_minutes: float = typer.Option(60.0, "--grace-minutes", help="never touch anything younger than this"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only print what would go"),
) -> None:
    """Remove artifacts that back no run, and abandoned partial writes."""
    from stores import ArtifactStore
    from stores.maintenance import collect_garbage

    removed = collect_garbage(ArtifactStore(store), grace_minutes * 60, keep_runs, dry_run)
    verb = "would remove" if dry_run else "removed"
    for kind, paths in removed.items():
        for path in paths:
            typer.echo(f"{verb} {kind[:-1]}: {path}")
    typer.echo(f"{verb} {len(removed['artifacts'])} artifacts, {len(removed['partial_writes'])} partial writes, "
               f"{len(removed['runs'])} run records")
