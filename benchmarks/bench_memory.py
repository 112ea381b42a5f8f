"""Peak CPU memory of one cold SAA+ run as the image size grows (the maps, masks and SAM decoding scale with H x W).

    python benchmarks/bench_memory.py --sizes 256 1024 2048 --images 6
    python benchmarks/bench_memory.py --models vitb --sizes 1024 --images 3 --batch-size 1
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

from bench_ablation import MODELS  # noqa: E402
from bench_saa import _timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--images", type=int, default=6, help="test images per category (3 categories)")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    from tasks.datasets.synth import write_synthetic_mvtec

    rows = []
    for size in args.sizes:
        work = tempfile.mkdtemp(prefix=f"anomflow-memory-{size}-")
        data = os.path.join(work, "data")
        write_synthetic_mvtec(data, categories=3, images=args.images, seed=0, size=size)
        out = os.path.join(work, "out")
        cmd = [sys.executable, "-m", "flows.cli.main", "run", "saa-plus", "--dataset", "mvtec", "--root", data,
               "--store", os.path.join(work, "store"), "--out", out, "--models-dir", os.path.join(work, "none"),
               "--no-progress", "--batch-size", str(args.batch_size), *MODELS[args.models]]
        wall, rss, _ = _timed(cmd)
        report = json.load(open(os.path.join(out, "report.json")))
        boxes = {s["name"]: s.get("detail", {}) for s in report["stages"]}
        rows.append({"size": size, "images": len(report["images"]), "peak_rss_mb": round(rss),
                     "process_wall_s": round(wall, 1), "mask_stages": {k: v for k, v in boxes.items() if v}})
        print(json.dumps(rows[-1]), flush=True)
    result = {"models": args.models, "batch_size": args.batch_size, "rows": rows,
              "machine": f"{os.cpu_count()} cores", "created": time.strftime("%Y-%m-%d %H:%M")}
    dest = HERE / "results" / f"memory_{args.models}.json"
    dest.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
