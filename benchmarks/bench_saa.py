"""SAA benchmark: cold, warm, late-parameter change, and a bare loop of the same stage functions.

Each phase runs in its own process so that start-up (imports, the Prefect API, model loading) is measured
apart from the per-image cost. Usage:

    python benchmarks/bench_saa.py --models tiny   --images 48
    python benchmarks/bench_saa.py --models random --images 48     # SAM ViT-B + GroundingDINO Swin-T, random weights
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {"tiny": ["--set", "models.sam=tiny-sam", "--set", "models.detector=tiny-gdino"],
          # random detectors pass every query; cap candidates at a realistic count, in both arms
          "random": ["--set", "models.sam=sam-vit-b", "--set", "models.detector=gdino-swint-ogc", "--random-weights",
                     "--set", "max_boxes_per_caption=20"]}


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run cmd; return wall seconds, peak RSS in MB, and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out}")
    return wall, usage.ru_maxrss / 1024, out


def orchestrated(phase: str, data: str, store: str, work: str, models: str, extra: list[str]) -> dict:
    out_dir = os.path.join(work, phase)
    cmd = [sys.executable, "-m", "flows.cli.main", "run", "saa", "--dataset", "mvtec", "--root", data, "--store",
           store, "--out", out_dir, "--models-dir", os.path.join(work, "no-models"), "--no-progress",
           *MODELS[models], *extra]
    wall, rss, _ = _timed(cmd)
    report = json.load(open(os.path.join(out_dir, "report.json")))
    stage_s = sum(s["seconds"] for s in report["stages"])
    load_s = sum(report["model_load_seconds"].values())
    return {"phase": phase, "process_wall_s": wall, "flow_wall_s": report["wall_seconds"],
            "stage_s": stage_s, "model_load_s": load_s, "image_work_s": stage_s - load_s,
            "startup_s": wall - report["wall_seconds"], "peak_rss_mb": rss,
            "stages": {s["name"]: [s["computed"], s["reused"], s["seconds"]] for s in report["stages"]}}


def bare(data: str, work: str, models: str) -> dict:
    wall, rss, out = _timed([sys.executable, str(HERE / "bare_saa.py"), data, models, os.path.join(work, "bare.json")])
    result = json.load(open(os.path.join(work, "bare.json")))
    return {"phase": "bare", "process_wall_s": wall, "peak_rss_mb": rss, **result}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--keep", help="work folder to keep (default: a temp folder)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tasks.datasets.synth import write_synthetic_mvtec

    work = args.keep or tempfile.mkdtemp(prefix="anomflow-bench-")
    data, store = os.path.join(work, "data"), os.path.join(work, "store")
    write_synthetic_mvtec(data, categories=3, images=args.images // 3, seed=0, size=256)
    phases = [orchestrated("cold", data, store, work, args.models, []),
              orchestrated("warm", data, store, work, args.models, []),
              orchestrated("late_param", data, store, work, args.models, ["--set", "fusion=mean"]),
              bare(data, work, args.models)]
    cold, warm, late, loop = phases
    ratios = {"warm/cold (per-image)": warm["image_work_s"] / cold["image_work_s"],
              "late/cold (per-image)": late["image_work_s"] / cold["image_work_s"],
              "cold/bare (per-image)": cold["image_work_s"] / loop["image_work_s"],
              "warm/cold (process wall)": warm["process_wall_s"] / cold["process_wall_s"],
              "late/cold (process wall)": late["process_wall_s"] / cold["process_wall_s"],
              "cold/bare (process wall)": cold["process_wall_s"] / loop["process_wall_s"]}
    result = {"models": args.models, "images": args.images, "phases": phases, "ratios": ratios,
              "machine": f"{os.cpu_count()} cores", "created": time.strftime("%Y-%m-%d %H:%M")}
    dest = HERE / "results" / f"saa_{args.models}.json"
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps(ratios, indent=2))
    for p in phases:
        print(f"{p['phase']:<11} wall {p['process_wall_s']:7.1f}s  startup {p.get('startup_s', 0):6.1f}s  "
              f"load {p['model_load_s']:6.1f}s  image work {p['image_work_s']:7.2f}s  peak {p['peak_rss_mb']:7.0f} MB")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
