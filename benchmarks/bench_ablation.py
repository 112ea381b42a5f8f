"""SAA+ ablation cost: the six-variant `ablate` against one cold SAA+ run, each on a fresh store.

    python benchmarks/bench_ablation.py --models tiny --images 24
    python benchmarks/bench_ablation.py --models vitb --images 12    # random-weight SAM ViT-B dominates compute
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_saa import _timed  # noqa: E402

MODELS = {"tiny": ["--allow-tiny", "--set", "models.sam=tiny-sam", "--set", "models.detector=tiny-gdino",
                   "--set", "models.saliency=tiny-wrn50"],
          "vitb": ["--random-weights", "--set", "models.sam=sam-vit-b", "--set", "models.detector=tiny-gdino",
                   "--set", "models.saliency=tiny-wrn50"]}


def _phase(command: str, data: str, work: str, name: str, models: str, extra: list[str]) -> dict:
    out = os.path.join(work, name)
    cmd = [sys.executable, "-m", "flows.cli.main", command, "saa-plus", "--dataset", "mvtec", "--root", data,
           "--store", os.path.join(work, f"store-{name}"), "--out", out, "--models-dir",
           os.path.join(work, "no-models"), "--no-progress", *MODELS[models], *extra]
    wall, rss, _ = _timed(cmd)
    if command == "run":
        reports = [json.load(open(os.path.join(out, "report.json")))]
    else:
        summary = json.load(open(os.path.join(out, "ablation.json")))
        reports = [json.load(open(os.path.join(out, v, "report.json"))) for v in summary["variants"]]
    stage_s = sum(s["seconds"] for r in reports for s in r["stages"])
    load_s = sum(sum(r["model_load_seconds"].values()) for r in reports)
    return {"phase": name, "process_wall_s": wall, "stage_s": stage_s, "model_load_s": load_s,
            "image_work_s": stage_s - load_s, "peak_rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for both arms, e.g. max_boxes_per_caption=5")
    ap.add_argument("--tag", default="", help="suffix of the result file")
    args = ap.parse_args()
    extra = [a for o in args.overrides for a in ("--set", o)]
    from tasks.datasets.synth import write_synthetic_mvtec

    work = tempfile.mkdtemp(prefix="anomflow-ablation-")
    data = os.path.join(work, "data")
    write_synthetic_mvtec(data, categories=3, images=args.images // 3, seed=0, size=256)
    single = _phase("run", data, work, "single_saa_plus", args.models, extra)
    ablate = _phase("ablate", data, work, "ablate_six_variants", args.models, extra)
    ratios = {"ablate/single (image work)": ablate["image_work_s"] / single["image_work_s"],
              "ablate/single (process wall)": ablate["process_wall_s"] / single["process_wall_s"]}
    result = {"models": args.models, "images": args.images, "overrides": args.overrides,
              "phases": [single, ablate], "ratios": ratios,
              "machine": f"{os.cpu_count()} cores", "created": time.strftime("%Y-%m-%d %H:%M")}
    dest = HERE / "results" / f"ablation_{args.models}{args.tag}.json"
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
