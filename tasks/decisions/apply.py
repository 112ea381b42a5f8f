"""Pass/fail decisions from calibrated thresholds (placeholder: replaced by the decisions work of issue 11)."""
from __future__ import annotations


def apply_decisions(ctx, state, report: dict, out_dir: str) -> dict | None:
    """None: no thresholds given."""
    return None
