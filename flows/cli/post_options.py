"""The run options of what follows evaluation (decisions, validation, alerts): parsed and checked up front."""
from __future__ import annotations

import os
from urllib.parse import urlparse

from flows.cli.preflight import UsageError
from tasks.report.post_run import PostRunOptions


def post_options(thresholds: str | None, baseline: str | None, fail_on_validation: bool, validation: bool,
                 metric_floors: list[str], expected_counts: str | None, webhook: str | None,
                 anomaly_rate: float | None) -> PostRunOptions:
    """PostRunOptions from the command line; a malformed value is a usage error naming the option."""
    floors = []
    for text in metric_floors:
        name, sep, value = text.partition("=")
        try:
            floors.append((name.strip(), float(value)))
        except ValueError:
            raise UsageError(f"--metric-floor {text!r}: expected METRIC=NUMBER, e.g. image_auroc=0.7") from None
        if not sep or not name.strip():
            raise UsageError(f"--metric-floor {text!r}: expected METRIC=NUMBER, e.g. image_auroc=0.7")
    if anomaly_rate is not None and not 0.0 <= anomaly_rate <= 1.0:
        raise UsageError(f"--alert-anomaly-rate {anomaly_rate}: a share of images, between 0 and 1")
    if webhook is not None and urlparse(webhook).scheme not in ("http", "https"):
        raise UsageError(f"--alert-webhook {webhook!r}: needs an http:// or https:// URL")
    if anomaly_rate is not None and thresholds is None:
        raise UsageError("--alert-anomaly-rate needs --thresholds: without thresholds no image is decided")
    if fail_on_validation and not validation:
        raise UsageError("--fail-on-validation with --no-validation: nothing would be validated")
    for option, path in (("--thresholds", thresholds), ("--expected-counts", expected_counts)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{option} {path}: no such file")
    return PostRunOptions(thresholds=thresholds, baseline_run=baseline, fail_on_validation=fail_on_validation,
                          metric_floors=tuple(floors), expected_counts=expected_counts, validate=validation,
                          webhook_url=webhook, alert_anomaly_rate=anomaly_rate)


def check_post_options(post: PostRunOptions, store_url: str, method: str | None = None) -> None:
    """Checks that need the store or a file's content (a baseline run that exists, a readable thresholds file
    made for ``method``)."""
    if post.thresholds is not None:
        from tasks.decisions.thresholds_file import load_thresholds

        load_thresholds(post.thresholds, method)
    from tasks.validation.checks import check_baseline, check_expected_counts, check_metric_floors

    check_baseline(store_url, post.baseline_run)
    check_metric_floors(post.metric_floors)
    check_expected_counts(post.expected_counts)
