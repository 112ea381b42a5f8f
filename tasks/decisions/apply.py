"""Pass/fail decisions of a run from calibrated thresholds: decisions.parquet and decisions.csv, one row per image.

Columns: id (string, the image's content hash; null for an image that failed: the run keeps only its path),
path, category, score (float64, the image score of report.json; null for errors), threshold (float64, in the same
score space; null when the category has none), decision (``pass`` | ``fail`` | ``error`` | ``undecided``),
reason (string: why an image is ``error`` or ``undecided``, else null).

Thresholds are calibrated on un-normalised scores (``anomflow calibrate``). A run with ``normalise=
category_minmax`` scaled each category's maps by its (lo, hi): its thresholds are mapped into that run's scores,
(t - lo) / (hi - lo), read from the category's evaluation item, so ``score > threshold`` stays the decision and the
report's histograms can mark it.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from typing import Any

from flows.cli.preflight import UsageError
from tasks.decisions.thresholds_file import Thresholds, load_thresholds
from tasks.engine.stage import ItemSet

COLUMNS = (("id", "string"), ("path", "string"), ("category", "string"), ("score", "float64"),
           ("threshold", "float64"), ("decision", "string"), ("reason", "string"))
DECISIONS = ("pass", "fail", "error", "undecided")
IGNORED_CONFIG = ("batch_size", "normalise")   # neither changes a raw score (normalise is mapped, see above)


def evaluation_norms(ctx, state) -> dict[str, tuple[float, float] | None]:
    """category -> the (lo, hi) its evaluation scaled the maps with (None: not scaled), for the categories whose
    evaluation item is found (``category_evaluation`` or ``loco_evaluation``: the item of the set
    ``category:<name>`` of the run's images, as ``tasks.report.evaluate`` names it)."""
    by_category: dict[str, list] = defaultdict(list)
    for item in state.alive:
        by_category[item.record.category].append(item)
    found: dict[str, tuple[float, float] | None] = {}
    for ref in dict.fromkeys(r for r in state.artifacts if r.stage in ("category_evaluation", "loco_evaluation")):
        view = ctx.store.open(ref)
        for category, items in by_category.items():
            item = ItemSet(f"category:{category}", tuple(items)).item(ref.side)
            if category not in found and view.has(item):
                norm = view.meta(item)["norm"]
                found[category] = (float(norm[0]), float(norm[1])) if norm else None
    return found


def run_thresholds(ctx, state, loaded: Thresholds, categories: list[str], notes: list[str]) -> dict[str, float]:
    """category -> threshold in this run's score space; categories left out get a note (and stay undecided)."""
    thresholds = {c: t.threshold for c, t in loaded.categories.items() if c in categories}
    for category in sorted(set(categories) - set(thresholds)):
        notes.append(f"category {category}: {loaded.path} has no threshold for it; its images are undecided")
    if state.config.get("normalise", "none") == "none":
        return thresholds
    norms = evaluation_norms(ctx, state)
    mapped = {}
    for category, t in thresholds.items():
        if category not in norms:
            notes.append(f"category {category}: its evaluation item was not found, so its category min-max "
                         "cannot be undone; its images are undecided")
        elif norms[category] is None:
            mapped[category] = t
        elif norms[category][1] <= norms[category][0]:
            notes.append(f"category {category}: every map of this run has one value, so its scores carry nothing "
                         "to decide on; its images are undecided")
        else:
            lo, hi = norms[category]
            mapped[category] = (t - lo) / (hi - lo)
    if mapped:
        notes.append("this run normalises scores per category (normalise=category_minmax): the calibrated "
                     "thresholds are mapped into its scores with each category's (lo, hi)")
    return mapped


def mismatch_notes(loaded: Thresholds, report: dict[str, Any]) -> list[str]:
    """Differences between what the thresholds were calibrated with and this run (notes, not errors)."""
    notes = []
    keys = sorted((set(loaded.config) | set(report["config"])) - set(IGNORED_CONFIG))
    changed = [k for k in keys if loaded.config.get(k) != report["config"].get(k)]
    if changed:
        shown = ", ".join(f"{k} ({loaded.config.get(k)!r} -> {report['config'].get(k)!r})" for k in changed[:8])
        notes.append(f"config differs from the calibration's in {len(changed)} key(s): {shown}; the thresholds may "
                     "not fit these scores")
    identity = (lambda models: sorted((m.get("name"), m.get("weights_sha256")) for m in models))
    if identity(loaded.models) != identity(report["models"]):
        notes.append(f"models differ from the calibration's ({[m for m, _ in identity(loaded.models)]} -> "
                     f"{[m for m, _ in identity(report['models'])]}, or their weights); the thresholds may not fit")
    return notes


def decision_rows(report: dict[str, Any], state, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """One row per image of the run (scored ones, then the failed ones), sorted by category and path."""
    rows = []
    for image in report["images"]:
        t, score = thresholds.get(image["category"]), float(image["score"])
        if t is None:
            decision, reason = "undecided", f"no threshold for category {image['category']}"
        elif not math.isfinite(score):   # a NaN would compare as "pass": nothing broken may pass silently
            decision, reason = "undecided", f"score is not finite ({score})"
        else:
            decision, reason = ("fail" if score > t else "pass"), None
        rows.append({"id": image["id"], "path": image["path"], "category": image["category"],
                     "score": score, "threshold": t, "decision": decision, "reason": reason})
    category_of = {r.path: r.category for r in state.records}
    for failure in report["failures"]:
        category = category_of.get(failure["path"], "")
        rows.append({"id": None, "path": failure["path"], "category": category, "score": None,
                     "threshold": thresholds.get(category), "decision": "error", "reason": failure["reason"]})
    return sorted(rows, key=lambda r: (r["category"], r["path"]))


def write_decisions(rows: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    """decisions.parquet and decisions.csv in out_dir, each written to a temporary name and renamed."""
    import pyarrow as pa          # here: a run without --thresholds does not pay for pyarrow's import
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    paths = {"parquet": os.path.join(out_dir, "decisions.parquet"), "csv": os.path.join(out_dir, "decisions.csv")}
    tmp = {kind: f"{path}.{os.getpid()}.tmp" for kind, path in paths.items()}
    pq.write_table(table, tmp["parquet"])
    pa_csv.write_csv(table, tmp["csv"])
    for kind, path in paths.items():
        os.replace(tmp[kind], path)
    return paths


def apply_decisions(ctx, state, report: dict, out_dir: str) -> dict | None:
    """None without ``--thresholds``; else label every image, write the decision files, and return
    report["decisions"]: {thresholds_file, rule {cat: rule}, target_frr, thresholds {cat: float} (this run's
    score space), counts {cat: {pass, fail}}, anomaly_rate (fails / decided images; 0.0 when none was decided),
    undecided, errors, files {parquet, csv}, notes}."""
    path = ctx.post.thresholds
    if not path:
        return None
    notes: list[str] = []
    categories = sorted({i["category"] for i in report["images"]})
    try:
        loaded = load_thresholds(path, report["method"])
    except UsageError as exc:   # checked before the run; changed or removed since
        loaded, thresholds = None, {}
        notes.append(f"{exc}; no image is decided")
    else:
        notes.extend(mismatch_notes(loaded, report))
        thresholds = run_thresholds(ctx, state, loaded, categories, notes)
    rows = decision_rows(report, state, thresholds)
    files = write_decisions(rows, out_dir)
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        counts[row["category"]][row["decision"]] += 1
    fails = sum(c["fail"] for c in counts.values())
    decided = fails + sum(c["pass"] for c in counts.values())
    if not decided:
        notes.append("no image was decided")
    return {"thresholds_file": path,
            "rule": {c: t.rule for c, t in sorted(loaded.categories.items())} if loaded else {},
            "target_frr": loaded.target_frr if loaded else None,
            "thresholds": dict(sorted(thresholds.items())),
            "counts": {c: {"pass": n["pass"], "fail": n["fail"]} for c, n in sorted(counts.items()) if c},
            "anomaly_rate": fails / decided if decided else 0.0,
            "undecided": sum(c["undecided"] for c in counts.values()),
            "errors": sum(c["error"] for c in counts.values()),
            "files": files, "notes": notes}
