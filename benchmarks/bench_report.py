"""What the end of a run costs on a production-sized batch: report.html, Great Expectations validation and the
pass/fail decisions of a 1,000-image tiny-model `anomflow run saa`, as shares of the run's whole-process wall;
and the size of report.html. Usage:

    python benchmarks/bench_report.py [--images 1000] [--categories 4]

Thresholds come from `anomflow calibrate saa` on the train/good images of a small synthetic set with the same
categories (its own store, so the measured run stays cold). The run is timed cold (every stage computed) and then
warm (every stage, the validation and the report figures reused). Writes benchmarks/results/report.json.
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
ANOMFLOW = str(Path(sys.executable).with_name("anomflow"))


def _anomflow(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([ANOMFLOW, *args], capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise RuntimeError(f"anomflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done


def _shares(report_path: Path, wall: float) -> dict:
    report = json.loads(report_path.read_text())
    timings = report["timings"]
    end = {k: timings.get(k) or 0.0 for k in ("report", "validation", "decisions", "evaluation")}
    return {"wall_s": round(wall, 2), **{f"{k}_s": round(v, 3) for k, v in end.items()},
            "report_and_validation_share": round((end["report"] + end["validation"]) / wall, 4),
            "validation_cached": (report.get("validation") or {}).get("cached"),
            "report_html_bytes": (report_path.parent / "report.html").stat().st_size,
            "images": len(report["images"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000, help="test images in all (split over the categories)")
    ap.add_argument("--categories", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anomflow-report-"))
    common = ["--models-dir", str(work / "models"), "--allow-tiny"]
    per_category = args.images // args.categories
    _anomflow("synth", "--out", str(work / "data"), "--categories", str(args.categories), "--images",
              str(per_category), "--size", "128")
    _anomflow("synth", "--out", str(work / "calibration"), "--categories", str(args.categories), "--images", "8",
              "--size", "128", "--seed", "1")
    _anomflow("calibrate", "saa", "--dataset", "mvtec", "--root", str(work / "calibration"), "--split", "train",
              "--target-frr", "0.05", "--out", str(work / "thresholds.json"), "--store", str(work / "store-cal"),
              *common)
    run = ["run", "saa", "--dataset", "mvtec", "--root", str(work / "data"), "--store", str(work / "store"),
           "--out", str(work / "out"), "--thresholds", str(work / "thresholds.json"), "--no-progress", *common]
    env_note = {"ANOMFLOW_PREFECT_SERVER": os.environ.get("ANOMFLOW_PREFECT_SERVER", "auto")}
    cold_wall, _ = _anomflow(*run)
    cold = _shares(work / "out" / "report.json", cold_wall)
    warm_wall, _ = _anomflow(*run)
    warm = _shares(work / "out" / "report.json", warm_wall)
    result = {"images": cold["images"], "categories": args.categories, "image_size": 128,
              "models": "tiny-sam, tiny-gdino (stand-ins)", "prefect": env_note, "cold": cold, "warm": warm,
              "target": "report + validation <= 5% of the cold run's wall"}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
