"""report.html's template and pictures without a run: escaping, the banner, every section with its rows, a size
that does not grow with the number of images, exact curve points, the plots, overlays and the figure items' ids."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from tasks import metrics
from tasks.metrics_stream import stream_pixel_metrics, stream_pixel_metrics_and_curves
from tasks.report import figures
from tasks.report.figures_stage import CategoryFigures, figure_set, loco_panels, mvtec_panels, ranked
from tasks.report.report_html import MAX_FAILURES, render_html

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class TableRows(HTMLParser):
    """Counts the body rows of each table with an id (or a data-suite), and collects the ids on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}
        self.ids: set[str] = set()
        self._table: str | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self._table = a.get("id") or f"suite:{a.get('data-suite')}"
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.rows[self._table] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def parsed(page: str) -> TableRows:
    parser = TableRows()
    parser.feed(page)
    return parser


def _images(n: int, categories=("bottle", "cable")) -> list[dict]:
    return [{"id": f"{k:064x}", "path": f"/data/{categories[k % len(categories)]}/test/x/{k:05d}.png",
             "category": categories[k % len(categories)], "label": k % 2, "score": (k % 97) / 97} for k in range(n)]


def make_report(n_images: int = 8, n_failures: int = 2, **over) -> dict:
    """A report.json dict with every section filled (the agreed formats of decisions, validation, alerts)."""
    report = {
        "method": "saa", "run_id": "20260101T000000-abc", "created": "2026-01-01T00:00:00Z", "wall_seconds": 12.5,
        "warning": "made with tiny-* stand-ins", "notes": ["a note"], "stand_in_models": True,
        "models": [{"name": "tiny-sam", "weights_sha256": "seeded-random:ab", "tiny": True}],
        "metrics": {"bottle": {"pixel_auroc": 0.9, "image_auroc": None}, "cable": {"pixel_auroc": 0.8,
                                                                               "image_auroc": 0.7},
                    "mean": {"pixel_auroc": 0.85, "image_auroc": 0.7}},
        "mean_covers": {"pixel_auroc": ["bottle", "cable"], "image_auroc": ["cable"]},
        "metric_definitions": {"pixel_auroc": "ROC AUC over pixels", "image_auroc": "ROC AUC of image scores"},
        "images": _images(n_images),
        "failures": [{"path": f"/data/bottle/test/x/bad{k}.png", "reason": "truncated file"} for k in range(n_failures)],
        "stages": [{"name": "image_embedding", "computed": 4, "reused": 4, "failed": 0, "seconds": 1.5},
                   {"name": "defect_masks", "computed": 8, "reused": 0, "failed": 0, "seconds": 0.5,
                    "detail": {"boxes_decoded": 17}}],
        "timings": {"evaluation": 0.1},
        "decisions": {"thresholds_file": "/t/thresholds.json", "rule": {"bottle": "target_frr", "cable": "f1_max"},
                      "target_frr": 0.01, "thresholds": {"bottle": 0.5, "cable": 0.25},
                      "counts": {"bottle": {"pass": 3, "fail": 1}, "cable": {"pass": 2, "fail": 2}},
                      "anomaly_rate": 0.375, "files": {"parquet": "decisions.parquet", "csv": "decisions.csv"},
                      "notes": []},
        "validation": {"success": False, "cached": False, "data_docs": "gx/data_docs/index.html", "suites": {
            "manifest": {"version": "1", "success": True, "expectations": [
                {"expectation": "expect_column_values_to_be_unique", "column": "sha256", "kwargs": {},
                 "success": True, "unexpected_count": 0, "unexpected_examples": []}]},
            "outputs": {"version": "1", "success": False, "expectations": [
                {"expectation": "expect_column_values_to_be_between", "column": "score",
                 "kwargs": {"min_value": 0, "max_value": 1}, "success": False, "unexpected_count": 2,
                 "unexpected_examples": [1.5, 2.5]},
                {"expectation": "expect_column_values_to_not_be_null", "column": "score", "kwargs": {},
                 "success": True, "unexpected_count": 0, "unexpected_examples": []}]},
            "metrics": {"version": "1", "success": True, "expectations": []}}},
        "alerts": {"sent": True, "reasons": ["validation failed"], "status": 200, "error": None},
    }
    report.update(over)
    return report


def fake_figures(categories=("bottle", "cable"), n: int = 4) -> dict[str, CategoryFigures]:
    png = bytes(PNG_MAGIC) + bytes(2000)
    thumbs = [({"id": str(k), "relpath": f"{c}/test/x/{k}.png", "score": 0.5, "label": 1,
                "rank": "top" if k < n else "bottom"}, bytes(JPEG_MAGIC) + bytes(1000)) for c in categories
              for k in range(2 * n)]
    return {c: CategoryFigures(png, png, [t for t in thumbs if t[0]["relpath"].startswith(c)]) for c in categories}


def test_every_section_is_there_with_its_rows():
    report = make_report()
    page = parsed(render_html(report, fake_figures()))
    assert {"summary", "stand-in", "metrics", "categories", "decisions", "validation", "alerts", "failures",
            "stages", "validation-result", "alert-result"} <= page.ids
    assert page.rows["metrics-table"] == 3 and page.rows["stages-table"] == 2 and page.rows["failures-table"] == 2
    assert page.rows["decisions-table"] == 2
    assert {k: v for k, v in page.rows.items() if k.startswith("suite:")} == \
        {"suite:manifest": 1, "suite:outputs": 2, "suite:metrics": 0}
    html = render_html(report, fake_figures())
    assert html.count('class="chart"') == 4 and html.count('class="thumb"') == 16
    assert 'href="gx/data_docs/index.html"' in html and "boxes decoded 17" in html
    assert "image_auroc covers cable" in html               # a mean that leaves a category out says so


def test_sections_left_out_say_why():
    html = render_html(make_report(decisions=None, validation=None, alerts=None, failures=[], warning=None), {})
    assert "--thresholds" in html and "--no-validation" in html and "No webhook" in html
    assert "every image was processed" in html and 'id="stand-in"' not in html
    assert "No figures for this category" in html


def test_banner_only_for_stand_in_models():
    assert "Stand-in models" in render_html(make_report(), {})
    assert "Stand-in models" not in render_html(make_report(warning=None), {})


def test_text_from_the_run_is_escaped():
    evil = "<script>alert(1)</script>"
    report = make_report(notes=[evil], failures=[{"path": f"/d/{evil}.png", "reason": evil}])
    report["metrics"] = {evil: {"pixel_auroc": 0.5}}
    report["validation"]["suites"]["outputs"]["expectations"][0]["kwargs"] = {"value_set": [evil]}
    report["validation"]["suites"]["outputs"]["expectations"][0]["unexpected_examples"] = [evil]
    report["alerts"]["reasons"] = [evil]
    html = render_html(report, fake_figures(categories=(evil,)))
    assert "<script" not in html and html.count("&lt;script&gt;") >= 6


def test_size_does_not_grow_with_the_number_of_images():
    small = render_html(make_report(n_images=10, n_failures=3), fake_figures())
    big = render_html(make_report(n_images=20_000, n_failures=5_000), fake_figures())
    row = len('<tr><td class="text"><code>/data/bottle/test/x/bad10.png</code></td><td class="text">'
              'truncated file</td></tr>\n')
    assert len(big) - len(small) < (MAX_FAILURES - 3) * row + 200    # the listed failures, and the counts' digits
    assert parsed(big).rows["failures-table"] == MAX_FAILURES and "4950 more failures in report.json" in big


def _pairs(n: int, size: int = 24, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        mask = np.zeros((size, size), bool)
        if k % 2:
            mask[3:9, 4:12] = True
            mask[15:18, 15:20] = True
        amap = rng.random((size, size)).astype(np.float32) + 0.6 * mask
        out.append((np.round(amap, 3), mask))   # rounded: many tied scores
    return out


def test_streamed_curve_points_are_exact_points_of_the_curves_and_leave_the_metrics_alone():
    pairs = _pairs(40)
    values, curves = stream_pixel_metrics_and_curves(iter(pairs), budget=97)
    assert values == stream_pixel_metrics(iter(pairs), budget=97)
    maps, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    ranking = metrics._rank(maps.reshape(-1), masks.reshape(-1))
    fpr, pro = metrics.pro_curve(maps, masks)
    exact = {(round(f, 12), round(t, 12), round(p, 12), round(q, 12)) for f, t, p, q in
             zip(ranking.fps / ranking.n_neg, ranking.tps / ranking.n_pos, ranking.tps / (ranking.tps + ranking.fps),
                 pro[1:])}
    kept = list(zip(curves["fpr"], curves["tpr"], curves["precision"], curves["pro"]))
    assert 50 < len(kept) <= 760 < ranking.tps.size
    assert all((round(f, 12), round(t, 12), round(p, 12), round(q, 12)) in exact for f, t, p, q in kept)
    assert kept[-1][:2] == (1.0, 1.0) and np.all(np.diff(curves["fpr"]) >= 0)
    fine = [f for f in curves["fpr"] if f <= 0.3]
    assert max(np.diff(fine)) < 0.01      # the PRO range keeps its detail


def test_curve_panels_histogram_and_thumbnail_are_real_pictures():
    pairs = _pairs(10, seed=2)
    _, pixel = stream_pixel_metrics_and_curves(iter(pairs))
    scores = np.array([p[0].max() for p in pairs])
    labels = np.array([int(p[1].any()) for p in pairs], np.int8)
    panels = mvtec_panels(pixel, scores, labels)
    assert [len(p.lines) for p in panels] == [2, 2, 1] and panels[2].xmax == 0.3
    assert max(panels[2].lines[0].x) == pytest.approx(0.3)
    png = figures.panels_png(panels, "bottle").tobytes()
    hist = figures.histogram_png({"good": scores[labels == 0], "anomalous": scores[labels == 1]}, 1.1, "h").tobytes()
    for picture in (png, hist):
        decoded = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR)
        assert picture.startswith(PNG_MAGIC) and decoded.shape[0] > 150 and decoded.std() > 10
    assert mvtec_panels(None, scores, np.full(10, -1, np.int8)) == []      # unlabelled: no curves

    rgb = np.full((90, 120, 3), 128, np.uint8)
    mask = np.zeros((90, 120), bool)
    mask[30:60, 40:80] = True
    jpeg = figures.overlay_thumbnail(rgb, np.zeros((32, 32), np.float32), mask, size=60).tobytes()
    thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert jpeg.startswith(JPEG_MAGIC) and thumb.shape == (45, 60, 3)
    green = (thumb[..., 1] > 150) & (thumb[..., 0] < 120)
    assert green[15, 20:40].mean() > 0.8 and not green[22, 30] and not green[5, 5]   # the outline only


def test_loco_panels_read_both_kinds():
    kinds = ["good"] * 4 + ["logical_anomalies"] * 3 + ["structural_anomalies"] * 3
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.35, 0.9, 0.8, 0.05, 0.7])
    spro = {"logical": {"fpr": [0.0, 0.1, 0.5, 1.0], "spro": [0.0, 0.4, 0.8, 1.0]}, "structural": None}
    roc, curve = loco_panels(spro, scores, kinds)
    assert [line.label for line in roc.lines] == ["logical", "structural"]
    assert [line.label for line in curve.lines] == ["logical"] and curve.lines[0].x[-1] == pytest.approx(0.3)
    assert curve.lines[0].y[-1] == pytest.approx(0.4 + 0.4 * 0.2 / 0.4)


def test_top_and_bottom_images_do_not_repeat():
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.3])
    assert ranked(scores, 2) == [(1, "top"), (3, "top"), (2, "bottom"), (4, "bottom")]
    assert ranked(scores, 4) == [(1, "top"), (3, "top"), (0, "top"), (4, "top"), (2, "bottom")]


def test_the_threshold_is_part_of_a_figure_items_id():
    from tasks.engine.context import ImageItem
    from tasks.datasets.records import ImageRecord

    members = tuple(ImageItem(f"{k:064x}", ImageRecord(f"/d/{k}.png", f"c/test/good/{k}.png", "c", "test", 0, "good"),
                              (("mask", "absent"),)) for k in range(3))
    ids = {t: figure_set("c", members, t).item(("mask",)) for t in (None, 0.5, 0.5000001)}
    assert len(set(ids.values())) == 3 and figure_set("c", members, 0.5).item(("mask",)) == ids[0.5]
    assert re.fullmatch(r"[0-9a-f]{64}", ids[None])
