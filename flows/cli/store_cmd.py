"""`anomflow store ls|gc|verify|migrate`: inspect, prune, check and upgrade the artifact store."""
from __future__ import annotations

import json
import time

import typer

from flows.cli.run_cmd import DEFAULT_STORE, EXIT_USAGE

store_app = typer.Typer(help="Inspect, prune, verify and migrate the artifact store.", no_args_is_help=True)
STORE = typer.Option(DEFAULT_STORE, "--store", help="store URL or path")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _open(url: str):
    from stores import ArtifactStore, StoreError

    try:
        return ArtifactStore(url)
    except StoreError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_USAGE)


@store_app.command("ls")
def ls(store: str = STORE) -> None:
    """List artifacts: stage, key, items, packs, stored bytes, created, parameters (from the index)."""
    from stores.maintenance import list_artifacts

    infos = list_artifacts(_open(store))
    typer.echo(f"{'stage':<22} {'key':<14} {'items':>8} {'packs':>6} {'bytes':>9}  {'created':<20}  params")
    for a in infos:
        stage, key = a.path.split("/", 1)
        params = json.dumps(a.record.get("params", {}), separators=(",", ":"))
        typer.echo(f"{stage:<22} {key[:12]:<14} {a.items:>8} {a.packs:>6} {_human(a.nbytes):>9}  "
                   f"{a.record.get('created', ''):<20}  {params[:80]}")
    typer.echo(f"{len(infos)} artifacts, {sum(a.items for a in infos)} items, {_human(sum(a.nbytes for a in infos))}")


@store_app.command("gc")
def gc(
    store: str = STORE,
    keep_days: float = typer.Option(None, "--keep-days", help="first drop run records older than N days"),
    keep_runs: int = typer.Option(None, "--keep-runs", help="first keep only the N most recent run records"),
    grace_minutes: float = typer.Option(60.0, "--grace-minutes", help="never touch anything younger than this"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only print what would go"),
) -> None:
    """Drop old run records, then artifacts no remaining run uses and stale partial writes (safe while runs write)."""
    from stores.maintenance import collect_garbage

    start = time.perf_counter()
    removed = collect_garbage(_open(store), grace_minutes * 60, keep_runs, keep_days, dry_run)
    verb = "would remove" if dry_run else "removed"
    for kind, paths in removed.items():
        for path in paths:
            typer.echo(f"{verb} {kind[:-1].replace('_', ' ')}: {path}")
    typer.echo(f"{verb} {len(removed['runs'])} run records, {len(removed['artifacts'])} artifacts, "
               f"{len(removed['partial_writes'])} partial writes ({time.perf_counter() - start:.1f} s)")


@store_app.command("verify")
def verify(
    store: str = STORE,
    sample: int = typer.Option(None, "--sample", help="read back N random items instead of all"),
) -> None:
    """Read back committed items; report corrupt, partial and duplicate writes. Exit 1 if any item is corrupt."""
    from stores.maintenance import verify as verify_store

    report = verify_store(_open(store), sample)
    for kind in ("corrupt", "partial", "duplicates"):
        for line in getattr(report, kind):
            typer.echo(f"{kind}: {line}")
    typer.echo(f"checked {report.checked} items: {len(report.corrupt)} corrupt, {len(report.partial)} partial "
               f"writes, {len(report.duplicates)} duplicates")
    raise typer.Exit(0 if report.ok else 1)


@store_app.command("migrate")
def migrate(
    source: str = typer.Argument(..., help="a store in an older layout"),
    target: str = typer.Argument(..., help="a new store (layout 2) to copy every committed item into"),
) -> None:
    """Copy an older store's committed items into a new store, so that nothing has to be recomputed."""
    from stores.migrate import migrate_v1

    counts = migrate_v1(source, _open(target))
    typer.echo(f"migrated {counts['items']} items of {counts['artifacts']} artifacts into {target}")
