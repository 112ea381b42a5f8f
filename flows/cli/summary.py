"""The short summary printed at the end of a run."""
from __future__ import annotations

import typer


def _pct(v) -> str:
    return "   –" if v is None else f"{100 * v:5.1f}"


def print_summary(report: dict, report_path: str) -> None:
    if report.get("warning"):
        typer.secho(f"NOTE: {report['warning']}", fg=typer.colors.YELLOW)
    for note in report.get("notes", []):
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    typer.echo(f"{report['method']}: {len(report['images'])} images scored, {len(report['failures'])} failed, "
               f"{report['wall_seconds']:.1f} s")
    from tasks.report.report_json import detail_text   # loaded by the run already; kept off CLI start-up

    for stage in report["stages"]:
        typer.echo(f"  {stage['name']:<22} computed {stage['computed']:>5}  reused {stage['reused']:>5}  "
                   f"failed {stage['failed']:>3}  {stage['seconds']:7.2f} s" + detail_text(stage.get("detail")))
    if report["metrics"]:
        first = next(iter(report["metrics"].values()))
        keys = (["pixel_auroc", "pixel_f1_max", "pixel_aupro", "image_auroc"] if "pixel_auroc" in first else
                [k for k in ("image_auroc_mean", "auspro_0.05_mean", "image_auroc_logical", "auspro_0.05_logical")
                 if k in first])   # MVTec LOCO
        width = {k: max(14, len(k) + 2) for k in keys}
        typer.echo(f"  {'category':<22}" + "".join(f"{k:>{width[k]}}" for k in keys))
        for cat, vals in report["metrics"].items():
            typer.echo(f"  {cat:<22}" + "".join(f"{_pct(vals.get(k)):>{width[k]}}" for k in keys))
    for failure in report["failures"][:10]:
        typer.secho(f"  failed: {failure['path']}: {failure['reason']}", fg=typer.colors.RED)
    if len(report["failures"]) > 10:
        typer.echo(f"  ... and {len(report['failures']) - 10} more in the report")
    typer.echo(f"report: {report_path}")
