"""Dask benchmark: SAA cold runs on 1 vs 2 local Dask workers (one thread each), and in one process.

SAM ViT-B with seeded random weights and the oracle region generator, so SAM's image embedding dominates;
each arm is a fresh ``anomflow run saa`` process into a fresh store, with OMP_NUM_THREADS=1 (the Dask nanny
sets it for its workers too), so the workers are the only parallelism. Target: 1-worker / 2-worker >= 1.7
on the stage time. Usage:

    python benchmarks/bench_dask.py                   # 16 images -> benchmarks/results/dask.json
    python benchmarks/bench_dask.py --images 4 --out benchmarks/results/dask_quick.json   # a quick check
    python benchmarks/bench_dask.py --retain-heap     # glibc keeps freed memory (see RETAIN_HEAP)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAA = ["--set", "models.sam=sam-vit-b", "--random-weights", "--set", "region_generator=oracle"]
ARMS = {"single_process": [], "dask_1_worker": ["--workers", "1"], "dask_2_workers": ["--workers", "2"]}


# glibc returns every freed block above 32 MB (SAM's attention matrices) to the kernel and faults it in again on
# the next allocation (in a Dask worker's task thread, a thread arena does the same at any size); in a VM those
# page faults cost about 40% of the time and do not scale over processes. RETAIN_HEAP: one arena, no mmap, no
# trim, so freed memory is reused (the process keeps its peak).
RETAIN_HEAP = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def run_arm(name: str, extra: list[str], data: str, work: str, batch_size: int, env_extra: dict) -> dict:
    """One cold run in its own process and store; wall times from outside and from its report."""
    out, store = os.path.join(work, name), os.path.join(work, f"store-{name}")
    cmd = [sys.executable, "-m", "flows.cli.main", "run", "saa", "--dataset", "mvtec", "--root", data,
           "--store", store, "--out", out, "--models-dir", os.path.join(work, "no-models"), "--no-progress",
           "--batch-size", str(batch_size), *SAA, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env_extra}
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=HERE.parent)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):     # 3: some items failed (listed in the report)
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stdout}")
    report = json.load(open(os.path.join(out, "report.json")))
    stages = {s["name"]: s for s in report["stages"]}
    return {"arm": name, "process_wall_s": round(wall, 2), "flow_wall_s": report["wall_seconds"],
            "stage_s": round(sum(s["seconds"] for s in report["stages"]), 2),
            "image_embedding_s": stages["image_embedding"]["seconds"],
            "image_embedding_computed": stages["image_embedding"]["computed"],
            "model_load_s": report["model_load_seconds"], "executor": report.get("executor"),
            "failures": len(report["failures"]),
            "stages": {n: [s["computed"], s["reused"], s["seconds"]] for n, s in stages.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16, help="test images in all (two categories)")
    ap.add_argument("--batch-size", type=int, default=2, help="images per batch (a batch is a worker's unit)")
    ap.add_argument("--out", default=str(HERE / "results" / "dask.json"))
    ap.add_argument("--keep", help="work folder to keep (default: a temp folder)")
    ap.add_argument("--skip-single", action="store_true",
                    help="leave out the single-process arm (the target compares the two Dask arms)")
    ap.add_argument("--retain-heap", action="store_true",
                    help=f"every arm (and its workers) keeps freed memory instead of unmapping it: {RETAIN_HEAP}")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tasks.datasets.synth import write_synthetic_mvtec

    work = args.keep or tempfile.mkdtemp(prefix="anomflow-bench-dask-")
    data = os.path.join(work, "data")
    write_synthetic_mvtec(data, categories=2, images=max(1, args.images // 2), seed=0, size=256)
    env_extra = RETAIN_HEAP if args.retain_heap else {}
    chosen = {n: e for n, e in ARMS.items() if not (args.skip_single and n == "single_process")}
    arms = {name: run_arm(name, extra, data, work, args.batch_size, env_extra) for name, extra in chosen.items()}
    one, two, single = arms["dask_1_worker"], arms["dask_2_workers"], arms.get("single_process")
    ratios = {"1 worker / 2 workers (stage time)": one["stage_s"] / two["stage_s"],
              "1 worker / 2 workers (image_embedding)": one["image_embedding_s"] / two["image_embedding_s"],
              "1 worker / 2 workers (process wall)": one["process_wall_s"] / two["process_wall_s"],
              **({"single process / 2 workers (stage time)": single["stage_s"] / two["stage_s"]} if single else {})}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE.parent).stdout.strip()
    result = {"commit": commit, "images": 2 * max(1, args.images // 2), "image_size": 256, "batch_size": args.batch_size,
              "model": "sam-vit-b (random weights)", "threads_per_worker": 1, "cpus": os.cpu_count(),
              "allocator": env_extra or "glibc defaults (Dask workers: MALLOC_TRIM_THRESHOLD_=65536)",
              "machine": platform.processor() or platform.machine(), "arms": list(arms.values()),
              "ratios": {k: round(v, 3) for k, v in ratios.items()}, "target": ">= 1.7 (1 worker / 2 workers)"}
    for arm in arms.values():
        print(f"{arm['arm']:16s} process {arm['process_wall_s']:7.1f} s  flow {arm['flow_wall_s']:7.1f} s  "
              f"stages {arm['stage_s']:7.1f} s  image_embedding {arm['image_embedding_s']:7.1f} s")
    for name, value in result["ratios"].items():
        print(f"{name:42s} {value:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
