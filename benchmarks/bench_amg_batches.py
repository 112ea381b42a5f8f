"""What batching SAM's automatic-mask prompts saves: one image's automatic masks (the ``sam_automatic_masks`` stage's
algorithm, on one cached embedding) at several ``points_per_batch``, in one process. Random weights, CPU.

    python benchmarks/bench_amg_batches.py [--model sam-vit-h] [--points-per-side 32] [--batches 16,64,256]
                                           [--width 800 --height 640]

The embedding is computed once (not timed in the sweep); each arm decodes every grid point (3 masks each),
upscales the logits to the image size, filters and runs NMS. Writes benchmarks/results/amg_batches.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam-vit-h")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--out", default=str(HERE / "results" / "amg_batches.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import numpy as np
    import torch

    from tasks.datasets.image_io import read_image
    from tasks.datasets.synth_loco import write_synthetic_loco
    from tasks.models.loading import load_sam
    from tasks.stages.sam_auto import MaskGeneratorRule, automatic_masks, embedding_decoder

    work = tempfile.mkdtemp(prefix="anomflow-bench-amg-")
    (category,) = write_synthetic_loco(work, categories=1, train=1, validation=1, test=5, seed=0,
                                       size=(args.width, args.height))
    image = read_image(os.path.join(work, category, "test", "good", "000.png"))
    sam = load_sam(args.model, None, random_weights=True)
    started = time.perf_counter()
    embedding = sam.embed([image])[0]
    embed_s = time.perf_counter() - started
    hw = image.shape[:2]
    arms = []
    for batch in (int(b) for b in args.batches.split(",")):
        rule = MaskGeneratorRule(points_per_side=args.points_per_side, points_per_batch=batch,
                                 pred_iou_thresh=0.0, stability_score_thresh=0.0)
        started = time.perf_counter()
        masks = automatic_masks(embedding_decoder(sam, embedding, hw), hw, rule, sam.model.mask_threshold)
        seconds = time.perf_counter() - started
        arms.append({"points_per_batch": batch, "seconds": round(seconds, 2), "masks": int(len(masks["masks"])),
                     "masks_sha": hashlib.sha256(np.packbits(masks["masks"]).tobytes()).hexdigest()})
        print(f"points_per_batch {batch:4d}: {seconds:7.1f} s, {len(masks['masks'])} masks", flush=True)
    base = next((a for a in arms if a["points_per_batch"] == 64), arms[0])
    for a in arms:
        a["vs_64"] = round(a["seconds"] / base["seconds"], 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE.parent).stdout.strip()
    result = {"commit": commit, "model": f"{args.model} (random weights)", "image": [args.width, args.height],
              "points_per_side": args.points_per_side, "prompts": args.points_per_side ** 2,
              "embedding_s": round(embed_s, 2), "arms": arms, "same_masks_every_arm": len({a["masks_sha"]
                                                                                         for a in arms}) == 1,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
