"""Start-up of a warm `anomflow run saa` (24 cached images): whole-process wall with a reused Prefect server,
with the server started by the first run, and with Prefect's per-process ephemeral server; then the cost per image
beyond start-up of a warm rerun of 800 cached images (evaluation included): (wall 800 - wall 24) / 776. Usage:

    python benchmarks/bench_startup.py [--repeats 5] [--large 800]

The server runs on a port of its own with its own PREFECT_HOME (stopped at the end), so a server of yours is
left alone. The checkout is byte-compiled first (``compileall``), as ``pip install`` does for an installed package:
under ``PYTHONDONTWRITEBYTECODE=1`` (set on these sandboxes) an editable checkout would otherwise recompile its
modules from source on every run. Writes benchmarks/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--large", type=int, default=800, help="images of the large warm rerun (0 = skip)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anomflow-startup-"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", "flows", "tasks", "stores"], cwd=HERE.parent,
                   check=True, stdout=subprocess.DEVNULL)
    exe = [sys.executable, "-m", "flows.cli.main"]
    subprocess.run(exe + ["synth", "--out", str(work / "data"), "--categories", "3", "--images", "8", "--size", "128"],
                   check=True, capture_output=True)
    anomflow = [str(Path(sys.executable).with_name("anomflow"))]   # the console script users run
    run = anomflow + ["run", "saa", "--dataset", "mvtec", "--root", str(work / "data"), "--store", str(work / "store"),
                 "--out", str(work / "out"), "--models-dir", str(work / "models"), "--allow-tiny", "--no-progress"]
    port = _free_port()
    env = {**os.environ, "ANOMFLOW_PREFECT_SERVER": "auto", "ANOMFLOW_PREFECT_PORT": str(port),
           "PREFECT_HOME": str(work / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    ephemeral = {**env, "ANOMFLOW_PREFECT_SERVER": "ephemeral"}
    try:
        cold_s = _run(run, ephemeral)                                   # fills the store
        first_s = _run(run, env)                                        # warm, but starts the server
        reused = [_run(run, env) for _ in range(args.repeats)]
        per_process = [_run(run, ephemeral) for _ in range(args.repeats)]
        large = {}
        if args.large:
            per_cat = args.large // 4
            subprocess.run(exe + ["synth", "--out", str(work / "data800"), "--categories", "4", "--images",
                                  str(per_cat), "--size", "128"], check=True, capture_output=True)
            big = [a if a != str(work / "data") else str(work / "data800") for a in run]
            big = [a if a != str(work / "store") else str(work / "store800") for a in big]
            large["cold_s"] = round(_run(big, env), 2)
            large["warm_s"] = [round(_run(big, env), 2) for _ in range(args.repeats)]
            large["images"] = len(json.load(open(work / "out" / "report.json"))["images"])
            large["evaluation_s"] = json.load(open(work / "out" / "report.json"))["timings"].get("evaluation")
            small = sorted(reused)[len(reused) // 2]
            large["ms_per_image_beyond_startup"] = round(
                1000 * (sorted(large["warm_s"])[len(large["warm_s"]) // 2] - small) / (large["images"] - 24), 2)
    finally:
        subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "stop"], env=env,
                       capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True,
                            text=True).stdout.strip()
    result = {"commit": commit, "images": 24, "cold_ephemeral_s": round(cold_s, 2),
              "warm_first_run_starts_server_s": round(first_s, 2),
              "warm_server_reused_s": [round(x, 2) for x in reused],
              "warm_server_reused_median_s": round(sorted(reused)[len(reused) // 2], 2),
              "warm_ephemeral_server_s": [round(x, 2) for x in per_process], "large_warm_rerun": large}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
