"""report.html of a real tiny-model run, opened in Debian's chromium through Playwright: no console or page error,
every picture decoded with a non-zero size, the tables hold the rows report.json has, and a screenshot is kept.

The screenshot (and the page) go to ``$ANOMFLOW_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repository,
gitignored). Chromium missing is a failure, not a skip: CI installs it (.ci/run).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.flow_helpers import run_saa, stage_counts

CHROMIUM = os.environ.get("ANOMFLOW_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ANOMFLOW_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))

# what every <img> is, as the page sees it
IMAGES_JS = """els => els.map(e => ({alt: e.alt, cls: e.className, complete: e.complete,
                                    width: e.naturalWidth, height: e.naturalHeight}))"""
ROWS_JS = "el => el.querySelectorAll('tbody tr').length"


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    """A tiny-model SAA run on the shared synthetic data (2 categories): (report dict, its folder's parent, data)."""
    base = tmp_path_factory.mktemp("browser")
    models = base / "models"
    models.mkdir()
    code, report, output = run_saa(synth_root, str(base / "store"), str(base / "cold"), str(models))
    assert code == 0, output
    assert stage_counts(report)["report_figures"] == (2, 0)
    return report, base, synth_root


def test_warm_rerun_reuses_the_figures_without_plotting(tiny_run, monkeypatch):
    from tasks.report import figures

    report, base, root = tiny_run

    def refuse(*args, **kwargs):
        raise AssertionError("a warm run drew a figure")
    for name in ("panels_png", "histogram_png", "overlay_thumbnail"):
        monkeypatch.setattr(figures, name, refuse)
    code, warm, output = run_saa(root, str(base / "store"), str(base / "warm"), str(base / "models"))
    assert code == 0, output
    assert stage_counts(warm)["report_figures"] == (0, 2)
    cold_html = (base / "cold" / "report.html").read_text()
    warm_html = (base / "warm" / "report.html").read_text()
    # the same pictures (the page differs only in run id, dates, timings and reuse counts)
    pictures = lambda page: sorted(part.split('"')[0] for part in page.split("base64,")[1:])   # noqa: E731
    assert pictures(cold_html) == pictures(warm_html) and len(pictures(cold_html)) == 2 + 2 + _thumbnails(report)


def _thumbnails(report: dict, n: int = 4) -> int:
    """How many overlays the page shows: the top n and the bottom n (other) images of each category."""
    per_category: dict[str, int] = {}
    for image in report["images"]:
        per_category[image["category"]] = per_category.get(image["category"], 0) + 1
    return sum(min(2 * n, count) for count in per_category.values())


def test_report_renders_in_chromium(tiny_run):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), (f"chromium not found at {CHROMIUM}: install Debian's chromium "
                                      "(apt-get install chromium; .ci/run does) or set ANOMFLOW_CHROMIUM")
    _, base, _ = tiny_run
    page_path = base / "cold" / "report.html"
    report = json.loads((base / "cold" / "report.json").read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]} {r.failure}"))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", IMAGES_JS)
            rows = {table: page.eval_on_selector(f"#{table}", ROWS_JS)
                    for table in ("metrics-table", "stages-table")}
            failures_rows = page.eval_on_selector("#failures-table", ROWS_JS) if report["failures"] else 0
            expectations = page.eval_on_selector_all("table.expectations", """els => Object.fromEntries(
                els.map(e => [e.dataset.suite, e.querySelectorAll('tbody tr').length]))""")
            decision_rows = page.eval_on_selector("#decisions-table", ROWS_JS) if report.get("decisions") else 0
            banner = page.inner_text("#stand-in")
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    shutil.copy(page_path, ARTIFACTS / "report.html")
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    charts = [i for i in images if "chart" in i["cls"]]
    thumbs = [i for i in images if "thumb" in i["cls"]]
    assert len(charts) == 2 * 2 and len(thumbs) == _thumbnails(report)    # curves + histogram per category
    broken = [i["alt"] for i in images if not i["complete"] or i["width"] == 0 or i["height"] == 0]
    assert broken == []
    assert rows["metrics-table"] == len(report["metrics"]) == 3       # two categories and the mean
    assert rows["stages-table"] == len(report["stages"])
    assert failures_rows == min(len(report["failures"]), 50)
    validation = report.get("validation")
    assert expectations == ({name: len(s["expectations"]) for name, s in validation["suites"].items()}
                            if validation else {})
    assert decision_rows == len((report.get("decisions") or {}).get("counts", {}))
    assert "Stand-in models" in banner
