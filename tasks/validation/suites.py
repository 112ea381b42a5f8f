"""The three expectation suites, kept as code: plain data here, turned into GX objects only where they run.

A :class:`Check` names a GX Core expectation class and its arguments, so a suite can be hashed into the validation
stage's key and shipped to where it runs without importing Great Expectations. Raise a suite's version whenever
its checks change meaning. Frames and their columns: ``tasks.validation.frames``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.validation.baseline import drift_bounds

SUITE_VERSIONS = {"manifest": "1", "outputs": "1", "metrics": "1"}
MIN_CHANNEL_STD = 1.0      # grey levels: an image whose every channel varies less is blank (one colour)
MAX_SIDE = 65_535          # pixels: a larger side is a corrupt header, whatever the decoder says
MAP_VALUE_MIN = 0.0        # every method's raw maps are non-negative (fused mask scores, feature distances)
SCORE_RANGES = {"category_minmax": (0.0, 1.0), "none": (0.0, None)}   # image scores per normalisation


@dataclass(frozen=True)
class Check:
    """One expectation: ``expectation`` is the GX class name (``ExpectColumnValuesToBeBetween``)."""

    expectation: str
    kwargs: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    checks: tuple[Check, ...]
    id_column: str = "path"   # unexpected rows are named by this column
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def where(**equal: Any) -> dict[str, Any]:
    """A pandas row condition ``a == "x" and b == 1`` as expectation kwargs."""
    text = " and ".join(f"{column} == {json.dumps(value)}" for column, value in equal.items())
    return {"row_condition": text, "condition_parser": "pandas"}


def _is_one(column: str, description: str, **condition: Any) -> Check:
    return Check("ExpectColumnValuesToBeInSet", {"column": column, "value_set": [1], **condition}, description)


def manifest_suite(groups: list[tuple[str, str]], expected: dict[str, dict[str, int]] | None) -> Suite:
    """Input files. groups: the (category, split) pairs the run reads (score and support splits); expected: the
    ``--expected-counts`` table, which then replaces the "at least one image" check of every group."""
    checks = [
        _is_one("usable", "every file is readable and went through the run (failed ones name their reason)"),
        Check("ExpectColumnValuesToBeBetween", {"column": "width", "min_value": 1, "max_value": MAX_SIDE},
              f"image width in [1, {MAX_SIDE}] px"),
        Check("ExpectColumnValuesToBeBetween", {"column": "height", "min_value": 1, "max_value": MAX_SIDE},
              f"image height in [1, {MAX_SIDE}] px"),
        Check("ExpectColumnValuesToBeBetween", {"column": "std_max", "min_value": MIN_CHANNEL_STD},
              f"not blank: some channel's pixel std is at least {MIN_CHANNEL_STD} grey levels"),
        Check("ExpectColumnValuesToBeUnique", {"column": "id"},
              "no duplicate files (the id is the sha256 of the file's bytes)"),
        _is_one("size_is_category_mode", "image size equals its category's most common size"),
        _is_one("mode_is_category_mode", "image mode (RGB, L, ...) equals its category's most common mode"),
        _is_one("gt_present", "every anomalous image has its ground-truth mask", **where(gt_required=1)),
        _is_one("gt_size_ok", "every ground-truth mask has its image's size", **where(gt_required=1)),
    ]
    if expected is not None:
        for category, splits in sorted(expected.items()):
            for split, count in sorted(splits.items()):
                checks.append(Check("ExpectTableRowCountToEqual",
                                    {"value": count, **where(counted=1, category=category, split=split)},
                                    f"{category}/{split}: {count} files, as --expected-counts says"))
    elif groups:
        checks.append(Check("ExpectColumnDistinctValuesToContainSet",
                            {"column": "group", "value_set": [f"{c}/{s}" for c, s in groups], **where(counted=1)},
                            "every category has files in every split the run reads"))
    return Suite("manifest", SUITE_VERSIONS["manifest"], tuple(checks))


def outputs_suite(normalise: str, check_shape: bool, baseline: dict[str, Any] | None,
                  run_categories: list[str]) -> Suite:
    """Maps and scores. normalise: the run's map normalisation (score range); check_shape: the expected map size is
    known; baseline: a score summary (``tasks.validation.baseline``) bounding each shared category's drift."""
    low, high = SCORE_RANGES.get(normalise, (None, None))
    checks = [
        _is_one("map_found", "every scored image has its anomaly map"),
        Check("ExpectColumnValuesToBeBetween", {"column": "map_nonfinite", "min_value": 0, "max_value": 0},
              "maps hold no NaN or infinite value"),
        Check("ExpectColumnValuesToBeBetween", {"column": "map_min", "min_value": MAP_VALUE_MIN},
              f"raw map values are at least {MAP_VALUE_MIN}"),
        Check("ExpectColumnValuesToNotBeNull", {"column": "score"}, "every image score is a number (not NaN)"),
        Check("ExpectColumnValuesToBeBetween", {"column": "score", "min_value": low, "max_value": high},
              f"image scores in [{low}, {high if high is not None else 'inf'}] (normalise={normalise})"),
    ]
    if normalise == "category_minmax":
        checks.append(_is_one("category_maps_vary", "a category's maps are not all one value (min-max needs a "
                                                    "spread; otherwise every score is 0)"))
    if check_shape:
        checks += [Check("ExpectColumnPairValuesToBeEqual", {"column_A": "map_height", "column_B": "expected_height"},
                         "map height as the evaluation expects"),
                   Check("ExpectColumnPairValuesToBeEqual", {"column_A": "map_width", "column_B": "expected_width"},
                         "map width as the evaluation expects")]
    meta: dict[str, Any] = {}
    if baseline is not None:
        meta = {"baseline_method": baseline.get("method"),
                "categories_without_baseline": sorted(set(run_categories) - set(baseline["categories"]))}
        for category in sorted(set(run_categories) & set(baseline["categories"])):
            for statistic, (lo, hi) in drift_bounds(baseline["categories"][category]).items():
                name = {"mean": "ExpectColumnMeanToBeBetween", "median": "ExpectColumnMedianToBeBetween",
                        "std": "ExpectColumnStdevToBeBetween"}[statistic]
                checks.append(Check(name, {"column": "score", "min_value": round(lo, 6), "max_value": round(hi, 6),
                                           **where(category=category)},
                                    f"{category}: score {statistic} within the baseline's drift bounds"))
    return Suite("outputs", SUITE_VERSIONS["outputs"], tuple(checks), meta=meta)


def metrics_suite(floors: tuple[tuple[str, float], ...]) -> Suite:
    """Metrics where ground truth exists: each in [0, 1]; ``--metric-floor`` NAME=VALUE for every category and
    the mean."""
    checks = [Check("ExpectColumnValuesToBeBetween", {"column": "value", "min_value": 0.0, "max_value": 1.0},
                    "every metric is a number in [0, 1]")]
    for name, floor in floors:
        checks.append(Check("ExpectColumnValuesToBeBetween", {"column": "value", "min_value": floor,
                                                              **where(metric=name)},
                            f"{name} at least {floor} in every category and the mean"))
    return Suite("metrics", SUITE_VERSIONS["metrics"], tuple(checks), id_column="row")
