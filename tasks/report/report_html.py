"""report.html: one self-contained page rendered from ``templates/report.html.j2`` (Jinja2, autoescaped).

Its size does not grow with the number of images: per category it embeds one curve panel, one histogram and
2 x N thumbnails (the cached ``report_figures`` items), and it lists at most MAX_FAILURES failures and MAX_NOTES
notes (the rest stay in report.json).
"""
from __future__ import annotations

import base64
import json
from functools import lru_cache
from typing import Any

from tasks.report.figures_stage import CategoryFigures
from tasks.report.report_json import detail_text

MAX_FAILURES = 50
MAX_NOTES = 30
MAX_NOTE_CHARS = 1_000
MAX_EXAMPLES, MAX_EXAMPLE_CHARS, MAX_KWARGS_CHARS = 5, 80, 300


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _label_text(label: int | None) -> str:
    return {1: "anomalous", 0: "good"}.get(label, "unlabelled")


def _data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _short_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_KWARGS_CHARS else text[:MAX_KWARGS_CHARS] + "…"


def _examples(values: list | None) -> str:
    shown = [str(v)[:MAX_EXAMPLE_CHARS] for v in (values or [])[:MAX_EXAMPLES]]
    more = len(values or []) - len(shown)
    return ", ".join(shown) + (f" (+{more})" if more > 0 else "")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[:MAX_NOTE_CHARS] + " … (whole note in report.json)"


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, FileSystemBytecodeCache, PackageLoader, StrictUndefined

    # the compiled template is cached in the temp folder (keyed by the source's checksum): ~0.1 s of a warm run
    env = Environment(loader=PackageLoader("tasks.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      bytecode_cache=FileSystemBytecodeCache())
    env.filters.update(pct=_pct, number=_number, label_text=_label_text, data_uri=_data_uri,
                       short_json=_short_json, examples=_examples, detail=lambda d: detail_text(d).strip(" ()"))
    return env.get_template("report.html.j2")


def _category_counts(images: list[dict]) -> str:
    good = sum(1 for i in images if i["label"] == 0)
    bad = sum(1 for i in images if i["label"] == 1)
    unknown = len(images) - good - bad
    parts = [f"{len(images)} images", f"{good} good", f"{bad} anomalous"] + ([f"{unknown} unlabelled"] if unknown else [])
    return " · ".join(parts)


def render_html(report: dict, figures: dict[str, CategoryFigures] | None = None) -> str:
    """The page for one report.json dict (keys of ``tasks.report.report_json.build_report`` plus ``decisions``,
    ``validation`` and ``alerts``, each None or its section). figures: {category: its cached pictures}."""
    figures = figures or {}
    by_category: dict[str, list[dict]] = {}
    for image in report["images"]:
        by_category.setdefault(image["category"], []).append(image)
    thresholds = ((report.get("decisions") or {}).get("thresholds")) or {}
    names = sorted(set(by_category) | set(figures))
    categories = [{"name": n, "counts": _category_counts(by_category.get(n, [])), "figures": figures.get(n),
                   "threshold": thresholds.get(n)} for n in names]
    metric_keys = list(next(iter(report["metrics"].values()))) if report["metrics"] else []
    every = sorted(c for c in report["metrics"] if c != "mean")
    partial = [(k, cats) for k, cats in report.get("mean_covers", {}).items() if sorted(cats) != every]
    notes = [_clip(str(n)) for n in report.get("notes", [])]
    return _template().render(
        report={**{"decisions": None, "validation": None, "alerts": None}, **report},
        notes=notes[:MAX_NOTES], notes_left_out=max(0, len(notes) - MAX_NOTES),
        metric_keys=metric_keys, partial_means=partial, categories=categories,
        failures=report["failures"][:MAX_FAILURES], failures_left_out=max(0, len(report["failures"]) - MAX_FAILURES))
