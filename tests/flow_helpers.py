"""Run the CLI in-process and read its report, for the flow tests."""
from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from flows.cli.main import app


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def run_saa(root: str, store: str, out: str, models_dir: str, *extra: str, dataset: str = "mvtec",
            method: str = "saa") -> tuple[int, dict, str]:
    code, output = run_cli("run", method, "--dataset", dataset, "--root", root, "--store", store, "--out", out,
                           "--models-dir", models_dir, "--allow-tiny", "--no-progress", *extra)
    report_path = os.path.join(out, "report.json")
    report = json.load(open(report_path)) if os.path.exists(report_path) else {}
    return code, report, output


# What the end of every run computes from the maps: evaluation, the report's figures, the maps' statistics and the
# validation (a new map recomputes them; they hold no model call).
AFTER_MAPS = ("category_evaluation", "report_figures", "map_statistics", "validation_results")


def stage_counts(report: dict) -> dict[str, tuple[int, int]]:
    """stage name -> (computed, reused)."""
    return {s["name"]: (s["computed"], s["reused"]) for s in report["stages"]}
