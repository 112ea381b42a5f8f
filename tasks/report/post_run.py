"""What a run does after its maps are evaluated, as the user asked for it: decisions, validation, alerts.

The options travel in :class:`tasks.engine.context.RunContext` (``ctx.post``), so every method's flow gets them
without new flow parameters. None of them enters a stage key of the method's own stages.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PostRunOptions:
    thresholds: str | None = None          # thresholds.json written by `anomflow calibrate` (tasks.decisions)
    baseline_run: str | None = None        # --baseline RUN_ID: score distributions bound this run's drift
    fail_on_validation: bool = False       # a failed expectation -> exit code 4
    metric_floors: tuple[tuple[str, float], ...] = ()   # --metric-floor image_auroc=0.6 (repeat)
    expected_counts: str | None = None     # YAML/JSON {category: {split: count}} for the manifest suite
    validate: bool = True                  # --no-validation skips Great Expectations entirely
    webhook_url: str | None = None         # --alert-webhook URL: POSTed a JSON summary on an alert
    alert_anomaly_rate: float | None = None   # --alert-anomaly-rate 0.05: alert above this share of fails


EXIT_OK, EXIT_PARTIAL, EXIT_VALIDATION = 0, 3, 4


def after_evaluation(ctx, state, categories: list, report: dict, out_dir: str) -> None:
    """Decisions (with thresholds), validation (unless switched off), then alerts; each adds its section to the
    report (``decisions``, ``validation``, ``alerts``) and its time to ``report["timings"]``."""
    import os
    import time

    from tasks.alerts import send_alerts
    from tasks.decisions.apply import apply_decisions
    from tasks.validation.run import validate_run

    for name, step in (("decisions", lambda: apply_decisions(ctx, state, report, out_dir)),
                       ("validation", lambda: validate_run(ctx, state, categories, report, out_dir)),
                       ("alerts", lambda: send_alerts(ctx.post, report, os.path.join(out_dir, "report.json")))):
        started = time.perf_counter()
        report[name] = step()
        report["timings"][name] = round(time.perf_counter() - started, 3)


def exit_code(ctx, report: dict) -> int:
    """4: validation failed and --fail-on-validation; 3: some items failed; 0: all went well."""
    if ctx.post.fail_on_validation and (report.get("validation") or {}).get("success") is False:
        return EXIT_VALIDATION
    return EXIT_PARTIAL if report["failures"] else EXIT_OK
