"""Validation options checked before any work starts (``anomflow run``): each problem is a one-line usage error.

  check_baseline(store_url, run_id)     --baseline names a run of this store that recorded a score summary
  check_metric_floors(floors)           --metric-floor names metrics a run reports
  check_expected_counts(path)           --expected-counts is a {category: {split: count}} table
"""
from __future__ import annotations

import re

from flows.cli.preflight import UsageError
from tasks.report.report_json import METRIC_KEYS as FIXED_METRICS

# MVTec LOCO's keys (tasks.report.loco_evaluation_stage.flat_metrics): image_auroc_<kind>, auspro_<fpr>_<kind>
LOCO_METRIC = re.compile(r"^(image_auroc|auspro_\d+(\.\d+)?)_(logical|structural|mean)$")


def check_baseline(store_url: str, run_id: str | None) -> None:
    if run_id is None:
        return
    from stores import ArtifactStore
    from tasks.validation.baseline import BaselineError, baseline_summary
    try:
        baseline_summary(ArtifactStore(store_url), run_id)
    except BaselineError as exc:
        raise UsageError(str(exc)) from None


def is_metric(name: str) -> bool:
    return name in FIXED_METRICS or bool(LOCO_METRIC.match(name))


def check_metric_floors(floors: tuple[tuple[str, float], ...]) -> None:
    for name, value in floors:
        if not is_metric(name):
            raise UsageError(f"--metric-floor {name}={value}: unknown metric {name!r}; known: "
                             f"{', '.join(FIXED_METRICS)}, and MVTec LOCO's image_auroc_<kind>, auspro_<fpr>_<kind> "
                             "(kind logical, structural or mean)")
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--metric-floor {name}={value}: a floor between 0 and 1")


def load_expected_counts(path: str) -> dict[str, dict[str, int]]:
    """{category: {split: count}} from a YAML or JSON file; ValueError naming the file and the entry."""
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            table = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--expected-counts {path}: cannot read it ({exc})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"--expected-counts {path}: expected a mapping {{category: {{split: count}}}}")
    for category, splits in table.items():
        if not isinstance(splits, dict) or not splits:
            raise ValueError(f"--expected-counts {path}: category {category!r} needs a mapping {{split: count}}")
        for split, count in splits.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"--expected-counts {path}: {category}/{split}: {count!r} is not a count (an "
                                 "integer >= 0)")
    return {str(c): {str(s): int(n) for s, n in splits.items()} for c, splits in table.items()}


def check_expected_counts(path: str | None) -> None:
    if path is None:
        return
    try:
        load_expected_counts(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
