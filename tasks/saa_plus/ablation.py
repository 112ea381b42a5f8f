"""The paper's Table 2 ablation: variant configs from one SAA+ config, and the ablation.md/json writer."""
from __future__ import annotations

import json
import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.report.report_json import detail_text, write_json_atomic
from tasks.saa.config import SAAConfig, SAAModels
from tasks.saa_plus.config import SAAPlusConfig
from tasks.saa_plus.expert import paper_table2

VARIANTS = ("saa", "saa_plus", "no_language", "no_property", "no_saliency", "no_confidence")
_SWITCH = {"no_language": "language", "no_property": "property", "no_saliency": "saliency",
           "no_confidence": "confidence"}


def variant_config(base: SAAPlusConfig, variant: str) -> SAAPlusConfig | SAAConfig:
    """SAA+ with one prompt kind off, the full method, or vanilla SAA on the same models and colour order."""
    if variant == "saa":
        return SAAConfig(models=SAAModels(sam=base.models.sam, detector=base.models.detector),
                         region_generator=base.region_generator, refiner=base.refiner,
                         box_threshold=base.box_threshold, text_threshold=base.text_threshold,
                         max_boxes_per_caption=base.max_boxes_per_caption, sam_color_order=base.color_order,
                         fusion=base.fusion, eval_resolution=base.eval_resolution, normalise=base.normalise,
                         batch_size=base.batch_size)
    if variant == "saa_plus":
        return base
    if variant not in _SWITCH:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    prompts = base.prompts.model_copy(update={_SWITCH[variant]: False})
    return base.model_copy(update={"prompts": prompts})


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def ablation_markdown(summary: dict[str, Any]) -> str:
    variants = summary["variants"]
    cats = sorted({c for v in variants.values() for c in v["metrics"] if c != "mean"})
    lines = [f"# SAA+ ablation on {summary['dataset']} ({summary['images']} images)", "",
             "Pixel F1-max (%) per category; `paper` is the paper's Table 2 mean for that variant "
             "(row-to-prompt mapping UNVERIFIED).", ""]
    if summary.get("warning"):
        lines += [f"> **{summary['warning']}**", ""]
    lines += ["| variant | " + " | ".join(cats) + " | mean | paper |", "|---" * (len(cats) + 3) + "|"]
    for name, v in variants.items():
        row = [_pct(v["metrics"].get(c, {}).get("pixel_f1_max")) for c in cats + ["mean"]]
        paper = v["paper_pixel_f1_max"]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {'–' if paper is None else f'{paper:.2f}'} |")
    keys = ["pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "image_auroc", "image_ap", "image_f1_max"]
    lines += ["", "Mean over categories (%):", "", "| variant | " + " | ".join(keys) + " |", "|---" * 8 + "|"]
    for name, v in variants.items():
        mean = v["metrics"].get("mean", {})
        lines.append(f"| {name} | " + " | ".join(_pct(mean.get(k)) for k in keys) + " |")
    lines += ["", "Stages (images computed / reused), in run order:", "", "| variant | stages | seconds |",
              "|---|---|---|"]
    for name, v in variants.items():
        stages = ", ".join(f"{s['name']} {s['computed']}/{s['reused']}" + detail_text(s.get("detail"))
                           for s in v["stages"])
        lines.append(f"| {name} | {stages} | {sum(s['seconds'] for s in v['stages']):.1f} |")
    return "\n".join(lines) + "\n"


@task(cache_policy=NO_CACHE, persist_result=False)
def write_ablation(out_dir: str, dataset_kind: str, reports: dict[str, dict]) -> str:
    """Write ablation.json and ablation.md beside the variants' own reports; returns the json path."""
    paper = paper_table2()
    first = next(iter(reports.values()))
    summary = {
        "dataset": dataset_kind, "images": len(first["images"]), "warning": first.get("warning"),
        "variants": {name: {"metrics": r["metrics"], "stages": r["stages"], "failures": len(r["failures"]),
                            "wall_seconds": r["wall_seconds"],
                            "paper_pixel_f1_max": (paper.get(name) or {}).get(dataset_kind)}
                     for name, r in reports.items()},
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "ablation.json")
    write_json_atomic(path, summary)
    with open(os.path.join(out_dir, "ablation.md"), "w", encoding="utf-8") as fh:
        fh.write(ablation_markdown(summary))
    return path


def load_summary(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
