"""Webhook alerts after a run: a failed validation, or an anomaly rate above the user's threshold.

The webhook gets one JSON POST (see :func:`alert_payload`). A webhook that is down, slow or answers an error is
recorded in ``report["alerts"]`` and never fails the run: the report is what the line keeps.
"""
from __future__ import annotations

import time
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ATTEMPTS = 2                 # one retry, after RETRY_PAUSE seconds, on a transport error or a 5xx answer
RETRY_PAUSE = 1.0
EXAMPLES_PER_EXPECTATION = 5


def alert_reasons(post, report: dict) -> list[str]:
    """Why this run alerts, one sentence each; [] when nothing is wrong (or nothing was checked)."""
    reasons = []
    validation = report.get("validation")
    if validation is not None and validation.get("success") is False:
        failed = failed_expectations(validation)
        suites = sorted({f["suite"] for f in failed})
        reasons.append(f"validation failed: {len(failed)} expectation(s) failed"
                       + (f" in suite(s) {', '.join(suites)}" if suites else ""))
    decisions = report.get("decisions")
    if post.alert_anomaly_rate is not None and decisions is not None:
        rate = decisions["anomaly_rate"]
        if rate > post.alert_anomaly_rate:
            failed, total = _decision_totals(decisions)
            reasons.append(f"anomaly rate {rate:.4g} above {post.alert_anomaly_rate:.4g} "
                           f"({failed} of {total} images failed)")
    return reasons


def failed_expectations(validation: dict) -> list[dict[str, Any]]:
    """The failed expectations of every suite: [{suite, expectation, column, unexpected_count, examples}]."""
    failed = []
    for suite, result in sorted((validation.get("suites") or {}).items()):
        for exp in result.get("expectations", []):
            if not exp.get("success"):
                failed.append({"suite": suite, "expectation": exp.get("expectation"), "column": exp.get("column"),
                               "unexpected_count": exp.get("unexpected_count"),
                               "unexpected_examples": list(exp.get("unexpected_examples") or [])
                               [:EXAMPLES_PER_EXPECTATION]})
    return failed


def _decision_totals(decisions: dict) -> tuple[int, int]:
    """(failed images, decided images) over every category."""
    counts = decisions.get("counts") or {}
    failed = sum(c["fail"] for c in counts.values())
    return failed, failed + sum(c["pass"] for c in counts.values())


def alert_payload(post, report: dict, reasons: list[str], report_path: str | None) -> dict[str, Any]:
    """The JSON body POSTed to the webhook."""
    decisions, validation = report.get("decisions"), report.get("validation")
    failed, total = _decision_totals(decisions) if decisions else (None, None)
    return {
        "event": "anomflow.alert",
        "run_id": report.get("run_id"),
        "method": report.get("method"),
        "created": report.get("created"),
        "reasons": reasons,
        "report": report_path,
        "stand_in_models": bool(report.get("stand_in_models")),
        "images": len(report.get("images") or []),
        "failed_items": len(report.get("failures") or []),
        "counts": decisions.get("counts") if decisions else None,
        "failed_images": failed,
        "decided_images": total,
        "anomaly_rate": decisions.get("anomaly_rate") if decisions else None,
        "alert_anomaly_rate": post.alert_anomaly_rate,
        "validation_success": validation.get("success") if validation else None,
        "failed_expectations": failed_expectations(validation) if validation else [],
    }


def post_json(url: str, payload: dict) -> tuple[int | None, str | None]:
    """POST with a timeout and one retry: (HTTP status or None, error or None). Never raises for the network."""
    status, error = None, None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE)
        try:
            response = httpx.post(url, json=payload, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
            continue
        status = response.status_code
        if response.is_success:
            return status, None
        error = f"HTTP {status}: {response.text[:200]}"
        if status < 500:   # a client error will not change on retry
            break
    return status, f"{error} (after {attempt + 1} attempt(s))"


def send_alerts(post, report: dict, report_path: str | None = None) -> dict | None:
    """Call ``post.webhook_url`` when the run alerts.

    post: :class:`tasks.report.post_run.PostRunOptions`; report: the run's report with ``decisions`` and
    ``validation`` filled in; report_path: where report.json goes (named in the payload).
    Returns None without a webhook, else ``{"sent": bool, "reasons": [str], "status": int|None, "error": str|None}``
    (``sent`` False with no reasons: nothing was wrong, no call made).
    """
    if not post.webhook_url:
        return None
    reasons = alert_reasons(post, report)
    if not reasons:
        return {"sent": False, "reasons": [], "status": None, "error": None}
    status, error = post_json(post.webhook_url, alert_payload(post, report, reasons, report_path))
    return {"sent": error is None, "reasons": reasons, "status": status, "error": error}
