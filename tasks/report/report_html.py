"""report.html: metrics, stage statistics, failures and a few overlays, in one self-contained page."""
from __future__ import annotations

import base64
import html
import io

import cv2
import numpy as np
from PIL import Image

from tasks.datasets.image_io import read_image
from tasks.report.evaluate import CategoryResult

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}"
          ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.8em}figure{display:inline-block;margin:4px}"
          "figcaption{font-size:11px;max-width:200px;word-break:break-all}")


def overlay_png(image_path: str, anomaly_map: np.ndarray, size: int = 200) -> str:
    """Base64 PNG of the image with the map (R x R, values in [0, 1]) as a JET heat overlay."""
    rgb = cv2.resize(read_image(image_path), (size, size), interpolation=cv2.INTER_AREA)
    heat = cv2.applyColorMap((np.clip(cv2.resize(anomaly_map, (size, size)), 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.55 * rgb + 0.45 * heat).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render_html(report: dict, categories: list[CategoryResult]) -> str:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>anomflow {e(report['method'])}</title>",
             f"<style>{_STYLE}</style><h1>anomflow · {e(report['method'])}</h1>",
             f"<p>run {e(report['run_id'])} · {len(report['images'])} images · {len(report['failures'])} failures · "
             f"{report['wall_seconds']:.1f} s</p>"]
    if report.get("warning"):
        parts.append(f"<p class='warn'><b>Stand-in models.</b> {e(report['warning'])}</p>")
    for note in report.get("notes", []):
        parts.append(f"<p class='warn'>{e(note)}</p>")
    parts.append("<h2>Models</h2><ul>" + "".join(
        f"<li>{e(m['name'])} <code>{e(str(m['weights_sha256'])[:16])}</code>{' (tiny)' if m.get('tiny') else ''}"
        f"{' (random weights)' if m.get('random_weights') else ''}</li>" for m in report["models"]) + "</ul>")
    if report["metrics"]:
        keys = list(next(iter(report["metrics"].values())))
        rows = "".join(f"<tr><th>{e(cat)}</th>" + "".join(f"<td>{_fmt(v.get(k))}</td>" for k in keys) + "</tr>"
                       for cat, v in report["metrics"].items())
        parts.append("<h2>Metrics (%)</h2><table><tr><th>category</th>" +
                     "".join(f"<th>{e(k)}</th>" for k in keys) + f"</tr>{rows}</table>")
    rows = "".join(f"<tr><th>{e(s['name'])}</th><td>{s['computed']}</td><td>{s['reused']}</td><td>{s['failed']}</td>"
                   f"<td>{s['seconds']:.2f}</td></tr>" for s in report["stages"])
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>computed</th><th>reused</th><th>failed</th>"
                 f"<th>seconds</th></tr>{rows}</table>")
    if report["failures"]:
        parts.append("<h2>Failures</h2><ul>" + "".join(
            f"<li><code>{e(f['path'])}</code>: {e(f['reason'])}</li>" for f in report["failures"]) + "</ul>")
    parts.append("<h2>Highest-scoring images</h2>")
    for cat in categories:
        for rec, amap in cat.previews:
            caption = f"{rec.category}/{rec.defect_type or '?'}/{rec.stem}"
            parts.append(f"<figure><img src='data:image/png;base64,{overlay_png(rec.path, amap)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    return "\n".join(parts)
