"""Peak memory of evaluation as the category grows: streamed (the cached ``category_evaluation`` stage) against
the former in-memory computation (every map of the category stacked, one argsort of all pixels).

For each N, one category of N synthetic images; a cold oracle `run saa` (no model) writes 400 x 400 maps. Then,
each in a fresh process: (a) a rerun whose evaluation alone recomputes (``normalise=none`` changes only its key),
peak RSS of the process; (b) the in-memory metrics on the same maps (``tasks.metrics.pixel_metrics``), peak RSS.
The figure is the growth of the peak per added image (least-squares slope, MB per image). Usage:

    python benchmarks/bench_eval_memory.py [--counts 50,100,200,400]   -> results/eval_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORACLE = ["--set", "region_generator=oracle", "--set", "refiner=oracle", "--set", "fusion=mean",
          "--set", "eval_resolution=400"]

_CLI = """
import resource, runpy, sys
sys.argv = ["anomflow"] + sys.argv[1:]
try:
    runpy.run_module("flows.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""

_IN_MEMORY = """
import dataclasses, json, resource, sys
import numpy as np
from stores import ArtifactStore
from tasks import metrics
from tasks.report.evaluation_stage import ground_truth
from tasks.engine.context import RunContext
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.engine.runner import image_item
from tasks.saa import fusion
store_url, root, run_id = sys.argv[1:4]
ctx = RunContext(store_url=store_url, models_dir="/nonexistent", progress=False)
run = start_run.fn(ctx, "bench", {}, DatasetSpec("mvtec", root), [], ("mask",))
store = ArtifactStore(store_url)
ref = next(store.ref("anomaly_map", a.split("/", 1)[1]) for a in store.run_info(run_id).artifacts
           if a.startswith("anomaly_map/"))
ref = dataclasses.replace(ref, side=("mask",))     # oracle boxes read the ground truth: items keyed on it
view = store.open(ref)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
maps = fusion.minmax_normalise(np.stack([view.read(image_item(ref, i)).arrays["map"] for i in run.alive]))
gts = np.stack([ground_truth(i, 400) for i in run.alive])
out = metrics.pixel_metrics(maps, gts)
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
print("BASE_KB", base, file=sys.stderr)
"""


def _peak(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = dict(line.split()[:2] for line in proc.stderr.splitlines() if line.startswith(("PEAK_KB", "BASE_KB")))
    if "PEAK_KB" not in lines:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed:\n{proc.stderr[-3000:]}")
    return {k: int(v) / 1024 for k, v in lines.items()}


def slope(xs: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="50,100,200,400")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="anomflow-evalmem-"))
    env = {**os.environ, "ANOMFLOW_PREFECT_SERVER": "ephemeral", "PYTHONPATH": str(REPO)}
    py = [sys.executable]
    rows = []
    for n in counts:
        data, store = work / f"data{n}", work / f"store{n}"
        # synth writes `images` good + `images` defective test images per category
        subprocess.run(py + ["-m", "flows.cli.main", "synth", "--out", str(data), "--categories", "1",
                             "--images", str(n // 2), "--size", "64"], check=True, cwd=REPO, capture_output=True)
        run = ["run", "saa", "--dataset", "mvtec", "--root", str(data), "--store", str(store), "--no-progress",
               "--models-dir", str(work / "models"), *ORACLE]
        cold = _peak(py + ["-c", _CLI, *run, "--out", str(work / f"cold{n}")], env)
        report = json.loads((work / f"cold{n}" / "report.json").read_text())
        streamed = _peak(py + ["-c", _CLI, *run, "--out", str(work / f"eval{n}"), "--set", "normalise=none"], env)
        again = json.loads((work / f"eval{n}" / "report.json").read_text())
        counts_eval = {s["name"]: s["computed"] for s in again["stages"]}
        assert counts_eval["category_evaluation"] == 1 and counts_eval["anomaly_map"] == 0, counts_eval
        in_memory = _peak(py + ["-c", _IN_MEMORY, str(store), str(data), report["run_id"]], env)
        rows.append({"images": len(report["images"]), "streamed_peak_mb": round(streamed["PEAK_KB"], 1),
                     "in_memory_peak_mb": round(in_memory["PEAK_KB"], 1),
                     "in_memory_before_metrics_mb": round(in_memory["BASE_KB"], 1),
                     "cold_run_peak_mb": round(cold["PEAK_KB"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    xs = [r["images"] for r in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    result = {"commit": commit, "rows": rows, "map_size": 400,
              "streamed_mb_per_image": round(slope(xs, [r["streamed_peak_mb"] for r in rows]), 3),
              "in_memory_mb_per_image": round(slope(xs, [r["in_memory_peak_mb"] for r in rows]), 3)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "eval_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
