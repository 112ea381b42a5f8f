"""Webhook alerts after a run (placeholder: replaced by the alerts work of issue 11)."""
from __future__ import annotations


def send_alerts(post, report: dict) -> dict | None:
    """None: no webhook configured."""
    return None
