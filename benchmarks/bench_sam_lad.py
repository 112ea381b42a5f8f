"""SAM-LAD benchmark (METHODS.md §4, §7.3): what caching saves, what the missing-object flag changes, and what a
query costs at full size. Every arm is ``anomflow run sam-lad`` in its own process; figures come from its
report.json. Two parts, each runnable alone:

    python benchmarks/bench_sam_lad.py --part tiny              # tiny stand-ins -> results/sam_lad_tiny.json
    python benchmarks/bench_sam_lad.py --part tiny --quick      # a smaller set, to check the script
    python benchmarks/bench_sam_lad.py --part full              # SAM ViT-H etc., random weights, 800 x 640
    python benchmarks/bench_sam_lad.py --part full --width 1600 --height 1280   # MVTec LOCO's own size

tiny: cold, warm, and cold + new training images on one store (ratios to the cold run), then the metrics with
``score_missing_objects`` on and off for ``object_source`` oracle and sam (the off run reuses all up to
object_scores). full: per-stage seconds per image of a cold run, its split into query-only and reference work
(again with the synthetic set's object labels in place of random SAM's masks, so that the object stages see a
LOCO-like object count), and the automatic-mask stage at several ``points_per_batch`` (the SAM embeddings are
cached: only that stage and its dependants recompute). Random or tiny weights: no figure here says anything about
the method's accuracy. On 2 CPU cores SAM ViT-H's encoder alone takes about 2 minutes per image, so the default
full part (2 queries, k=2, train 4: at most 6 images through SAM) runs for roughly half an hour.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER = {"fps": 8.9, "gflops": 54.7, "hardware": "1x NVIDIA A100 40 GB, Xeon Gold 6230R", "upsample_factor": 8,
         "loco_image_auroc": 90.7, "loco_spro_0.05": 83.2,
         "note": "the paper's 8.9 FPS is on an A100 at full MVTec LOCO size (1600 x 1280) with the trained weights; "
                 "this benchmark runs random (or tiny) weights on CPU, so its seconds are not comparable to that "
                 "figure, and the paper's metrics cannot be reproduced without the weights"}
# tiny-sam's random masks never pass SAM's default IoU / stability thresholds (an image without masks has no
# objects and scores 0), so both are 0 here; 8 x 8 prompts keep the tiny run short
TINY_SETTINGS = {"mask_generator.points_per_side": 8, "mask_generator.pred_iou_thresh": 0.0,
                 "mask_generator.stability_score_thresh": 0.0}
FULL_MODELS = {"models.sam": "sam-vit-h", "models.backbone": "dinov2-vits14",
               "models.upsampler": "featup-jbu-dinov2", "upsampler": "featup", "upsample_factor": 8}
# stage kinds (tasks/sam_lad/plan.py): per image (queries and the references they use), per query, per category
PER_IMAGE = ("dinov2_features", "image_embedding", "sam_automatic_masks", "object_masks", "upsampled_features",
             "object_descriptors")
PER_QUERY = ("nearest_references", "object_matching", "object_scores", "sam_lad_map")
REFERENCE_ONLY = ("memory_bank",)
OBJECT_STAGES = ("object_descriptors", "object_matching", "object_scores", "sam_lad_map")
MODEL_STAGES = {"backbone": ("dinov2_features",), "sam": ("image_embedding", "sam_automatic_masks"),
                "upsampler": ("upsampled_features",)}   # a model loads in the first of these that computes
METRICS = ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean", "auspro_0.05_mean")
TEST_FOLDERS = ("good", "logical_anomalies", "structural_anomalies")


def set_args(settings: dict) -> list[str]:
    """{"a.b": 1} -> ["--set", "a.b=1"] (booleans as true / false, as the CLI reads them)."""
    return [a for k, v in settings.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]


def stage_work_seconds(report: dict) -> dict[str, float]:
    """Stage name -> seconds, with each model's load time taken out of the first stage that computed with it."""
    seconds = {s["name"]: float(s["seconds"]) for s in report["stages"]}
    computed = {s["name"]: s["computed"] for s in report["stages"]}
    loads = report.get("model_load_seconds", {})
    for role, name in report["config"]["models"].items():
        first = next((st for st in MODEL_STAGES.get(role, ()) if computed.get(st)), None)
        if name in loads and first:
            seconds[first] = max(0.0, seconds[first] - loads[name])
    return seconds


class Runner:
    """Runs ``anomflow run sam-lad`` on one dataset root; every run's options start with ``base``."""

    def __init__(self, work: str, data: str, base: list[str], env: dict[str, str], echo: bool):
        self.work, self.data, self.base, self.env, self.echo = work, data, base, env, echo

    def run(self, phase: str, store: str, settings: dict) -> tuple[dict, dict]:
        """One process; returns (the phase record, the report). Exit codes other than 0 and 3 raise."""
        out = os.path.join(self.work, phase)
        cmd = [sys.executable, "-m", "flows.cli.main", "run", "sam-lad", "--dataset", "loco", "--root", self.data,
               "--store", store, "--out", out, "--models-dir", os.path.join(self.work, "no-models"), "--no-progress",
               *self.base, *set_args(settings)]
        print(f"[{time.strftime('%H:%M:%S')}] {phase}: {' '.join(cmd[3:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                cwd=REPO)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if self.echo:
                print(f"    | {line.rstrip()}", flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 3):   # 3: the run completed, some items failed (counted below)
            raise RuntimeError(f"{phase}: exit {code}\n{''.join(lines[-40:])}")
        report = json.load(open(os.path.join(out, "report.json")))
        stage_s = sum(s["seconds"] for s in report["stages"])
        load_s = sum(report["model_load_seconds"].values())
        record = {"phase": phase, "settings": settings, "exit_code": code, "failures": len(report["failures"]),
                  "queries": report["dataset"]["images"], "process_wall_s": round(wall, 3),
                  "flow_wall_s": report["wall_seconds"], "startup_s": round(wall - report["wall_seconds"], 3),
                  "stage_s": round(stage_s, 3), "model_load_s": round(load_s, 3),
                  "image_work_s": round(stage_s - load_s, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                  "stages": {s["name"]: {k: s.get(k) for k in ("computed", "reused", "failed", "seconds", "detail")
                                         if k in s} for s in report["stages"]},
                  "metrics_mean": {k: report["metrics"].get("mean", {}).get(k) for k in METRICS}}
        print(f"[{time.strftime('%H:%M:%S')}] {phase}: {wall:.1f} s wall, {stage_s:.1f} s in stages, "
              f"{record['failures']} failed items, peak {record['peak_rss_mb']:.0f} MB", flush=True)
        return record, report


def machine(env: dict[str, str], device: str) -> dict:
    """CPU model, cores, the torch threads a run gets under env, versions, and the git commit."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads(), torch.__version__)"],
                           capture_output=True, text=True, env=env, cwd=REPO)
    threads, torch_version = (probe.stdout.split() + ["?", "?"])[:2]
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": int(threads) if threads.isdigit() else None,
            "torch": torch_version, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS"), "device": device,
            "python": platform.python_version(), "git_commit": commit.stdout.strip() or None}


def ratio(a: float, b: float) -> float | None:
    """a / b to 4 decimals; None when b is 0."""
    return round(a / b, 4) if b else None


def _copy_added_images(data: str, per_category: int) -> int:
    """Copy the first ``per_category`` validation/good images of each category into train/good as added_NNN.png
    (new bytes: the synthetic writer draws validation images apart from training ones); returns the total."""
    total = 0
    for category in sorted(os.listdir(data)):
        source = os.path.join(data, category, "validation", "good")
        if not os.path.isdir(source):
            continue
        names = sorted(os.listdir(source))[:per_category]
        if len(names) < per_category:
            raise ValueError(f"{source}: holds {len(names)} images, {per_category} are to be added")
        for i, name in enumerate(names):
            shutil.copyfile(os.path.join(source, name), os.path.join(data, category, "train", "good",
                                                                     f"added_{i:03d}.png"))
        total += len(names)
    return total


def tiny_part(args, runner: Runner) -> dict:
    """Cold / warm / added training images, and the missing-object flag, with tiny stand-in models."""
    from tasks.datasets.synth_loco import write_synthetic_loco

    size = (args.width, args.height)
    write_synthetic_loco(runner.data, categories=args.categories, train=args.train, validation=args.added,
                         test=args.test, seed=0, size=size)   # the validation images are the ones added later
    store = os.path.join(runner.work, "store")
    base = dict(TINY_SETTINGS)
    cold, cold_report = runner.run("cold", store, base)
    warm, _ = runner.run("warm", store, base)
    flag = [cold, runner.run("sam_missing_off", store, {**base, "score_missing_objects": False})[0],
            runner.run("oracle_missing_on", store, {**base, "object_source": "oracle"})[0],
            runner.run("oracle_missing_off", store, {**base, "object_source": "oracle",
                                                      "score_missing_objects": False})[0]]
    added_total = _copy_added_images(runner.data, args.added)
    added, _ = runner.run("added_train_images", store, base)
    order = [s["name"] for s in cold_report["stages"]]
    before_scores = order[:order.index("object_scores")]
    checks = {"warm computes nothing": all(s["computed"] == 0 for s in warm["stages"].values()),
              "missing flag off reuses every stage before object_scores": all(
                  run["stages"][name]["computed"] == 0 for run in (flag[1], flag[3])
                  for name in before_scores if name in run["stages"]),
              "added run computes DINOv2 features of exactly the added images":
                  added["stages"]["dinov2_features"]["computed"] == added_total}
    objects = {"sam": cold, "oracle": flag[2]}   # the runs that computed the descriptors
    flag_rows = []
    for run, source, on in zip(flag, ("sam", "sam", "oracle", "oracle"), (True, False, True, False)):
        descriptors = objects[source]["stages"]["object_descriptors"]
        flag_rows.append({"object_source": source, "score_missing_objects": on, "phase": run["phase"],
                          **run["metrics_mean"], "object_scores_computed": run["stages"]["object_scores"]["computed"],
                          "objects_per_image": round(descriptors.get("detail", {}).get("objects", 0)
                                                     / max(1, descriptors["computed"]), 2)})
    notes = [f"object_source={r['object_source']}: no object survived the area filter (stand-in masks), so its "
             "maps are zero and its metrics sit at chance" for r in flag_rows[::2] if not r["objects_per_image"]]
    return {"part": "tiny", "notes": notes, "stand_in": "every figure comes from tiny-* seeded random-weight stand-ins (tiny-sam, "
            "tiny-dinov2, tiny-featup-jbu): timings and metrics say nothing about SAM-LAD itself",
            "dataset": {"kind": "synthetic MVTec LOCO layout", "categories": args.categories, "width": size[0],
                        "height": size[1], "train_per_category": args.train, "test_per_folder": args.test,
                        "queries": cold["queries"], "added_train_per_category": args.added,
                        "added_train_total": added_total},
            "settings": base, "phases": [cold, warm, *flag[1:], added],
            "ratios": {f"{name}/cold ({label})": ratio(run[key], cold[key])
                       for name, run in (("warm", warm), ("added", added))
                       for label, key in (("process wall", "process_wall_s"), ("stage seconds", "stage_s"),
                                          ("stage seconds less model loading", "image_work_s"))},
            "added_run_computed": {n: s["computed"] for n, s in added["stages"].items()},
            "missing_object_flag": flag_rows, "checks": checks}


def _keep_queries(data: str, count: int) -> None:
    """Leave ``count`` test images per category, taken in turn from good, logical and structural."""
    for category in sorted(os.listdir(data)):
        test = os.path.join(data, category, "test")
        if not os.path.isdir(test):
            continue
        names = {f: sorted(os.listdir(os.path.join(test, f))) for f in TEST_FOLDERS}
        order = [(f, names[f][i]) for i in range(max(map(len, names.values()))) for f in TEST_FOLDERS
                 if i < len(names[f])]
        for folder, name in order[count:]:
            os.remove(os.path.join(test, folder, name))


def stage_rows(report: dict) -> list[dict]:
    """A run's per-stage seconds per item, split into query-only and reference work (seconds per query).

    Model load time is taken out of the stage that loaded the model. Per-image stages are split by item count
    (queries vs the references and bank images computed beside them: same size, same per-item cost); per-query
    stages are query work; the bank is reference work; the evaluation is neither (left out)."""
    queries, work = len(report["images"]), stage_work_seconds(report)
    rows = []
    for s in report["stages"]:
        name, n = s["name"], s["computed"]
        per_item = work[name] / n if n else 0.0
        if name in PER_IMAGE:
            query_s, kind = per_item * min(queries, n), "per image"
        elif name in PER_QUERY or name in REFERENCE_ONLY:
            query_s, kind = (work[name], "per query") if name in PER_QUERY else (0.0, "per category (references)")
        else:
            continue
        rows.append({"stage": name, "kind": kind, "computed": n, "seconds": round(work[name], 3),
                     "seconds_per_item": round(per_item, 4), "query_s_per_query": round(query_s / queries, 4),
                     "reference_s_per_query": round((work[name] - query_s) / queries, 4),
                     "objects_per_image": round(s.get("detail", {}).get("objects", 0) / n, 2)
                     if name == "object_descriptors" and n else None})
    return rows


def per_query(rows: list[dict], k: int) -> dict:
    """Totals of stage rows: query-only and amortised reference seconds per query, one reference image's cost
    (SAM embedding, automatic masks, upsampled features, descriptors: its DINOv2 features belong to the offline
    bank), and a query's seconds when none of its k references is cached."""
    query_only = sum(r["query_s_per_query"] for r in rows)
    reference_image = sum(r["seconds_per_item"] for r in rows
                          if r["kind"] == "per image" and r["stage"] != "dinov2_features")
    return {"query_only_s_per_query": round(query_only, 3),
            "reference_s_per_query_amortised": round(sum(r["reference_s_per_query"] for r in rows), 3),
            "reference_image_s": round(reference_image, 3),
            "per_query_s_no_reference_cached": round(query_only + k * reference_image, 3),
            "query_only_fps": round(1.0 / query_only, 4) if query_only else None}


def full_part(args, runner: Runner) -> dict:
    """Per-query seconds at full size with random weights, and automatic masks at several points_per_batch."""
    from tasks.datasets.synth_loco import write_synthetic_loco

    write_synthetic_loco(runner.data, categories=args.categories, train=args.train, validation=1, test=5, seed=0,
                         size=(args.width, args.height))
    _keep_queries(runner.data, args.queries)
    store = os.path.join(runner.work, "store")
    base = {**FULL_MODELS, "k_references": args.k, "mask_generator.points_per_side": args.points_per_side,
            "mask_generator.pred_iou_thresh": args.pred_iou_thresh,
            "mask_generator.stability_score_thresh": args.stability_score_thresh}
    cold_ppb = 64
    cold, cold_report = runner.run("cold", store, {**base, "mask_generator.points_per_batch": cold_ppb})
    # random SAM masks rarely survive the area filter: the same images with the synthetic set's object labels
    # give the object stages a LOCO-like object count (SAM's stages are not run; the rest is reused)
    oracle, oracle_report = runner.run("oracle_objects", store, {**base, "mask_generator.points_per_batch": cold_ppb,
                                                                 "object_source": "oracle"})
    rows, oracle_rows = stage_rows(cold_report), {r["stage"]: r for r in stage_rows(oracle_report)}
    with_objects = [oracle_rows[r["stage"]] if r["stage"] in OBJECT_STAGES else r for r in rows]
    sweep, phases = [], [cold, oracle]
    for ppb in args.points_per_batch:
        run, report = (cold, cold_report) if ppb == cold_ppb else \
            runner.run(f"points_per_batch_{ppb}", store, {**base, "mask_generator.points_per_batch": ppb})
        phases += [run] if run is not cold else []
        amg = run["stages"]["sam_automatic_masks"]
        sweep.append({"points_per_batch": ppb, "phase": run["phase"], "images": amg["computed"],
                      "seconds_per_image": round(stage_work_seconds(report)["sam_automatic_masks"]
                                                 / max(1, amg["computed"]), 3),
                      "automatic_masks": amg.get("detail", {}).get("automatic_masks", 0),
                      "image_embedding_computed": run["stages"]["image_embedding"]["computed"],
                      "peak_rss_mb": run["peak_rss_mb"]})
    reruns = [row for row in sweep if row["phase"] != "cold"]
    checks = {"reruns compute no SAM embedding": all(r["image_embedding_computed"] == 0 for r in reruns),
              "oracle rerun reuses the DINOv2 and upsampled features": all(
                  oracle["stages"][n]["computed"] == 0 for n in ("dinov2_features", "upsampled_features")),
              "every points_per_batch gives the same mask count": len({r["automatic_masks"] for r in sweep}) <= 1}
    return {"part": "full", "weights": "random (--random-weights): official architectures at full size, seeded "
            "random weights; masks, matches and scores are meaningless, only the seconds count",
            "paper": PAPER, "dataset": {"kind": "synthetic MVTec LOCO layout", "categories": args.categories,
                                        "width": args.width, "height": args.height, "train_per_category": args.train,
                                        "queries": cold["queries"]},
            "settings": base, "phases": phases, "queries": len(cold_report["images"]), "k_references": args.k,
            "split_method": " ".join((stage_rows.__doc__ + per_query.__doc__).split()),
            "stages_sam_objects": rows, "per_query_sam_objects": per_query(rows, args.k),
            "stages_oracle_objects": with_objects, "per_query_oracle_objects": per_query(with_objects, args.k),
            "oracle_objects_note": "the cold run's rows with object_descriptors, object_matching, object_scores and "
                                   "sam_lad_map taken from a rerun with object_source=oracle (SAM's cost stays in)",
            "points_per_batch_sweep": sweep, "sweep_note": f"points_per_batch {cold_ppb}: the cold run's stage (its "
            "peak RSS includes the image encoder); others: reruns on the same store (SAM embeddings cached), SAM "
            "load time removed", "checks": checks}


def markdown(result: dict) -> str:
    """A short table (README-ready) of a part's result."""
    if result["part"] == "tiny":
        d = result["dataset"]
        lines = [f"SAM-LAD, tiny stand-in models (random weights; no accuracy meaning): {d['categories']} synthetic "
                 f"LOCO categories at {d['width']}x{d['height']}, {d['queries']} queries, train {d['train_per_category']}"
                 f"/category", "", "| run | process wall s | stage s | vs cold (wall) | vs cold (stages) |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        cold = result["phases"][0]
        for p in result["phases"]:
            if p["phase"] in ("cold", "warm", "added_train_images"):
                name = f"+{d['added_train_per_category']} train images/category" if p["phase"] == "added_train_images" \
                    else p["phase"]
                lines.append(f"| {name} | {p['process_wall_s']:.1f} | {p['stage_s']:.1f} | "
                             f"{p['process_wall_s'] / cold['process_wall_s']:.2f} | "
                             f"{p['stage_s'] / cold['stage_s']:.2f} |")
        lines += ["", "added run, items computed: " + ", ".join(f"{k} {v}" for k, v in result["added_run_computed"]
                                                                  .items()),
                  "", "| objects | score_missing_objects | AUROC logical | AUROC structural | AUROC mean | "
                  "AUsPRO@0.05 mean | objects/image |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        pct = (lambda v: "n/a" if v is None else f"{100 * v:.1f}")
        for r in result["missing_object_flag"]:
            lines.append(f"| {r['object_source']} | {str(r['score_missing_objects']).lower()} | "
                         f"{' | '.join(pct(r[m]) for m in METRICS)} | {r['objects_per_image']} |")
    else:
        d, m, total = result["dataset"], result["machine"], result["per_query_sam_objects"]
        lines = [f"SAM-LAD per query, random weights on {m['device']} ({m['torch_threads']} threads, {m['cpu']}), "
                 f"{d['width']}x{d['height']}, {result['queries']} queries, k={result['k_references']}; the paper's "
                 f"8.9 FPS is on an A100 at 1600x1280 with trained weights", "",
                 "| stage | items | s / item | query s / query | reference s / query |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for r in result["stages_sam_objects"]:
            lines.append(f"| {r['stage']} | {r['computed']} | {r['seconds_per_item']:.3f} | "
                         f"{r['query_s_per_query']:.3f} | {r['reference_s_per_query']:.3f} |")
        lines += ["", "| objects | objects / image | query-only s / query | references s / query (amortised) | "
                  "s / query, no reference cached |", "| --- | ---: | ---: | ---: | ---: |"]
        for source in ("sam", "oracle"):
            t = result[f"per_query_{source}_objects"]
            count = next((r["objects_per_image"] for r in result[f"stages_{source}_objects"]
                          if r["stage"] == "object_descriptors"), None)
            lines.append(f"| {source} | {count} | {t['query_only_s_per_query']:.2f} | "
                         f"{t['reference_s_per_query_amortised']:.2f} | {t['per_query_s_no_reference_cached']:.2f} |")
        lines += ["", "| points_per_batch | sam_automatic_masks s / image | masks | peak RSS MB |",
                  "| ---: | ---: | ---: | ---: |"]
        for r in result["points_per_batch_sweep"]:
            lines.append(f"| {r['points_per_batch']} | {r['seconds_per_image']:.2f} | {r['automatic_masks']} | "
                         f"{r['peak_rss_mb']:.0f} |")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    lines += ["", "checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in result["checks"].items())]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; sizes left unset take the part's default (``--quick``: a smaller tiny set)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("tiny", "full"), required=True)
    ap.add_argument("--quick", action="store_true", help="tiny: 1 category, train 6, test 5, 96x80, 3 added")
    ap.add_argument("--categories", type=int, help="synthetic LOCO categories (tiny 2, full 1)")
    ap.add_argument("--train", type=int, help="train/good images per category (tiny 20, full 4)")
    ap.add_argument("--test", type=int, help="tiny: images in each test folder (default 10, at least 5)")
    ap.add_argument("--added", type=int, help="tiny: training images added per category (default 10)")
    ap.add_argument("--queries", type=int, default=2, help="full: test images kept per category")
    ap.add_argument("--k", type=int, default=2, help="full: k nearest references")
    ap.add_argument("--width", type=int, help="image width (tiny 160, full 800; LOCO is 1600)")
    ap.add_argument("--height", type=int, help="image height (tiny 128, full 640; LOCO is 1280)")
    ap.add_argument("--points-per-side", type=int, default=32, help="full: SAM automatic mask grid")
    ap.add_argument("--points-per-batch", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64, 256],
                    help="full: comma-separated points_per_batch values to time")
    ap.add_argument("--pred-iou-thresh", type=float, default=0.0,
                    help="full: random SAM weights pass no mask at SAM's 0.88, so 0 keeps the later stages fed")
    ap.add_argument("--stability-score-thresh", type=float, default=0.0, help="full: as --pred-iou-thresh (SAM: 0.95)")
    ap.add_argument("--threads", type=int, help="OMP/MKL threads of every run (default: torch's own choice)")
    ap.add_argument("--device", default="cpu", help="torch device of every run")
    ap.add_argument("--quiet", action="store_true", help="do not echo the runs' own output")
    ap.add_argument("--keep", help="work folder to keep (default: a temporary folder, removed at the end)")
    ap.add_argument("--out", help="result file (default benchmarks/results/sam_lad_<part>[_quick].json)")
    args = ap.parse_args(argv)
    for name in ("categories", "train", "test", "added", "width", "height", "queries", "k", "points_per_side"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    defaults = {"tiny": dict(categories=2, train=20, test=10, added=10, width=160, height=128),
                "full": dict(categories=1, train=4, test=5, added=0, width=800, height=640)}[args.part]
    if args.quick and args.part == "tiny":
        defaults.update(categories=1, train=6, test=5, added=3, width=96, height=80)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.part == "full" and not 1 <= args.queries <= 3 * 5:
        ap.error("--queries must lie in 1..15 (the synthetic set writes 5 images per test folder)")
    if args.part == "tiny" and args.test < 5:
        ap.error(f"--test must be at least 5 (every anomaly kind needs an image), got {args.test}")
    if args.quick and args.part != "tiny":
        ap.error("--quick applies to --part tiny only")
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        ap.error(f"--keep {args.keep}: the folder is not empty (a store left there would turn cold runs warm)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    work = args.keep or tempfile.mkdtemp(prefix="anomflow-bench-sam-lad-")
    os.makedirs(work, exist_ok=True)
    base = ["--device", args.device] + (["--allow-tiny"] if args.part == "tiny" else ["--random-weights"])
    runner = Runner(work, os.path.join(work, "data"), base, env, echo=not args.quiet)
    started, host = time.perf_counter(), machine(env, args.device)   # the commit the runs start from
    try:
        result = tiny_part(args, runner) if args.part == "tiny" else full_part(args, runner)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {**result, "command": " ".join([Path(sys.executable).name, "benchmarks/bench_sam_lad.py",
                                             *(argv if argv is not None else sys.argv[1:])]),
              "machine": host, "benchmark_wall_s": round(time.perf_counter() - started, 1),
              "created": time.strftime("%Y-%m-%d %H:%M")}
    dest = Path(args.out) if args.out else HERE / "results" / f"sam_lad_{args.part}{'_quick' if args.quick else ''}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
