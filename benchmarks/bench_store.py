"""Store scale benchmark (layout 2): inodes, bytes, round trips, warm reruns, 1 M-item lookups, ls/gc.

Flows run in fresh processes with tiny stand-in models at --batch-size 8 on synthetic images; "image work"
is stage seconds minus model load seconds, as in bench_saa.py. Figures (``--only`` picks some):

  1 inodes (files + dirs) per image after a cold `run saa` / `run saa-plus` (48 images, 256 px)
  2 bytes on disk (st_blocks) / raw bytes of every committed item's arrays, same stores
  3 store round trips per image of a cold `run saa` in-process: zarr syncs + index calls (store_probe.py)
  4 warm rerun of 800 images (128 px): image work ms per image
  5 warm rerun of 51 images on a store that also holds 800 others / on their own store: ratio
  6 lookup of 1,000 ids (half committed) in an artifact of 1 M items vs one of 1,000: local and S3 (moto)
  7 `store ls` and `store gc` beside the 1 M-item artifact (store_million.py)
  8 cold/bare per-image ratio with tiny models (bench_saa.py's phases; full-size: bench_saa --models random)

    python benchmarks/bench_store.py                 # all, ~25 min on 2 cores -> results/store_scale.json
    python benchmarks/bench_store.py --only 3,6 --quick --keep /tmp/work
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench_saa import _timed, bare, orchestrated  # noqa: E402

FULL = dict(cats=2, imgs=24, size=256, cats800=4, imgs800=200, size800=128, cats51=3, imgs51=17,
            million=1_000_000, s3_items=1_000_000, pack=10_000, query=1000, bare_per_cat=16, warm_repeats=5)
QUICK = dict(cats=2, imgs=4, size=128, cats800=2, imgs800=10, size800=128, cats51=3, imgs51=2,
             million=20_000, s3_items=2_000, pack=5_000, query=100, bare_per_cat=4, warm_repeats=1)
# (figure label, before, target, lower is better) -- before: the figures for layout 1
ROWS = {"inodes_saa": ("inodes per image, SAA", "95", 16),
        "inodes_plus": ("inodes per image, SAA+", "214", 16),
        "bytes_saa": ("bytes on disk / bytes of data, SAA", "1.68", 1.2),
        "bytes_plus": ("bytes on disk / bytes of data, SAA+", "-", 1.2),
        "round_trips": ("store round trips per image, SAA cold", "49", 8),
        "warm800": ("warm rerun, 800 images: ms per image beyond start-up", "32", 5),
        "warm800_store": ("  same, the store's part in-process: lookups + map reads (ms)", "-", 5),
        "ratio51": ("warm rerun of 51: store with 851 / own store (flow wall)", "2.4", 1.1),
        "ratio51_noeval": ("  same, flow wall without evaluation (metrics)", "-", 1.1),
        "ratio51_store": ("  same, the store's part in-process: lookups + map reads", "-", 1.1),
        "lookup_local": ("warm check of 1,000 in 1 M items, local (s)", "walks 1 M", 1),
        "lookup_s3": ("warm check of 1,000 in 1 M items, S3/moto (s)", "walks 1 M", 5),
        "lookup_s3_small": ("  same in 1,000 items, S3/moto (s)", "-", None),
        "ls": ("`store ls`, 1 M items, local (s)", "walks every item", 5),
        "gc": ("`store gc`, 1 M items, local (s)", "walks every item", 30),
        "cold_bare_tiny": ("cold/bare per image, tiny models", "3.2", None),
        "cold_bare_full": ("cold/bare per image, full-size models", "1.17", None)}


class Bench:
    def __init__(self, work: str, p: dict):
        self.work, self.p = Path(work), p
        self.nomodels = self.work / "no-models"
        self.nomodels.mkdir(parents=True, exist_ok=True)
        (self.work / "out").mkdir(exist_ok=True)
        self.built: dict[str, dict] = {}   # cold runs other figures reuse

    # ------------------------------------------------------------------------------------------ helpers
    def data(self, name: str, cats: int, imgs: int, size: int, seed: int) -> str:
        from tasks.datasets.synth import write_synthetic_mvtec

        path = self.work / name
        if not path.exists():
            write_synthetic_mvtec(str(path), categories=cats, images=imgs, seed=seed, size=size)
        return str(path)

    def flow(self, method: str, data: str, store: str, tag: str) -> dict:
        """`anomflow run METHOD` in a fresh process; bench_saa's phase figures plus the image count."""
        out = self.work / "out" / tag
        cmd = [sys.executable, "-m", "flows.cli.main", "run", method, "--dataset", "mvtec", "--root", data,
               "--store", store, "--out", str(out), "--allow-tiny", "--models-dir", str(self.nomodels),
               "--no-progress", "--batch-size", "8"]
        wall, rss, _ = _timed(cmd)
        report = json.loads((out / "report.json").read_text())
        stage_s = sum(s["seconds"] for s in report["stages"])
        load_s = sum(report["model_load_seconds"].values())
        return {"tag": tag, "images": report["dataset"]["images"], "process_wall_s": wall,
                "flow_wall_s": report["wall_seconds"], "stage_s": stage_s, "model_load_s": load_s,
                "image_work_s": stage_s - load_s, "peak_rss_mb": rss, "timings": report.get("timings", {}),
                "stages": {s["name"]: [s["computed"], s["reused"], s["seconds"]] for s in report["stages"]}}

    def cold(self, key: str, method: str, data: str) -> dict:
        """A cold run on a fresh store, once per benchmark (figures 1, 2 and 4, 5 share them)."""
        if key not in self.built:
            store = self.work / f"store-{key}"
            shutil.rmtree(store, ignore_errors=True)
            before = inodes(store)
            run = self.flow(method, data, str(store), f"{key}-cold")
            self.built[key] = {"store": str(store), "inodes_before": before, "run": run}
        return self.built[key]

    # ------------------------------------------------------------------------------------------ figures
    def fig1(self) -> dict:
        data = self.data("data48", self.p["cats"], self.p["imgs"], self.p["size"], 0)
        out = {}
        for method in ("saa", "saa-plus"):
            b = self.cold(method, method, data)
            after, n = inodes(b["store"]), b["run"]["images"]
            out[method] = {"images": n, "inodes_before": b["inodes_before"], "inodes_after": after,
                           "inodes_per_image": (after - b["inodes_before"]) / n,
                           "index_bytes": index_bytes(b["store"]), "cold_run": b["run"]}
        return out

    def fig2(self) -> dict:
        data = self.data("data48", self.p["cats"], self.p["imgs"], self.p["size"], 0)
        out = {}
        for method in ("saa", "saa-plus"):
            b = self.cold(method, method, data)
            disk, index, apparent = disk_bytes(b["store"])
            raw = data_bytes(b["store"])
            out[method] = {"disk_bytes": disk, "index_disk_bytes": index, "apparent_bytes": apparent,
                           "data_bytes": raw, "disk_over_data": disk / raw,
                           "disk_without_index_over_data": (disk - index) / raw}
        return out

    def fig3(self) -> dict:
        data = self.data("data48", self.p["cats"], self.p["imgs"], self.p["size"], 0)
        store, out, dest = self.work / "store-probe", self.work / "out" / "probe", self.work / "probe.json"
        shutil.rmtree(store, ignore_errors=True)
        cmd = [sys.executable, str(HERE / "store_probe.py"), str(dest), "run", "saa", "--dataset", "mvtec",
               "--root", data, "--store", str(store), "--out", str(out), "--allow-tiny", "--models-dir",
               str(self.nomodels), "--no-progress", "--batch-size", "8"]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        probe = json.loads(dest.read_text())
        assert probe["exit_code"] in (0, 3), probe["output_tail"]
        n = json.loads((out / "report.json").read_text())["dataset"]["images"]
        probe.pop("output_tail")
        return {"images": n, "zarr_sync_per_image": probe["zarr_sync"] / n,
                "index_calls_per_image": probe["index_calls"] / n,
                "round_trips_per_image": (probe["zarr_sync"] + probe["index_calls"]) / n, "probe": probe}

    def _data800(self) -> str:
        return self.data("data800", self.p["cats800"], self.p["imgs800"], self.p["size800"], 1)

    def fig4(self) -> dict:
        b = self.cold("800", "saa", self._data800())
        warm = self.flow("saa", self._data800(), b["store"], "800-warm")
        n, t = warm["images"], warm["timings"]
        reads = store_ops(b["store"], warm_plan(b["store"]))
        return {"images": n, "cold": b["run"], "warm": warm,
                "warm_image_work_ms_per_image": 1000 * warm["image_work_s"] / n,
                "warm_input_hashing_ms_per_image": 1000 * t.get("inputs", float("nan")) / n,
                "warm_evaluation_ms_per_image": 1000 * t.get("evaluation", float("nan")) / n,
                "store_lookups_and_map_reads_ms_per_image": 1000 * reads["median_s"] / n,
                "warm_flow_wall_ms_per_image": 1000 * warm["flow_wall_s"] / n,
                "warm_process_wall_s": warm["process_wall_s"], "store_ops": reads}

    def fig5(self) -> dict:
        data51 = self.data("data51", self.p["cats51"], self.p["imgs51"], self.p["size800"], 2)
        big = self.cold("800", "saa", self._data800())["store"]
        own = self.cold("51", "saa", data51)["store"]
        shared = self.flow("saa", data51, big, "51-cold-on-851")
        assert shared["stages"]["image_embedding"][1] == 0, "the 51 images must be new to the 800-image store"
        runs: dict[str, list[dict]] = {"own": [], "shared": []}
        for r in range(self.p["warm_repeats"]):   # alternate, so that drift hits both alike
            runs["own"].append(self.flow("saa", data51, own, f"51-warm-own-{r}"))
            runs["shared"].append(self.flow("saa", data51, big, f"51-warm-851-{r}"))
        return {"images": runs["own"][0]["images"], **ratios51(runs), **store_ops_pair(own, big),
                "cold_on_851": shared, "warm_runs": runs}

    def fig6(self) -> dict:
        import store_million

        local = store_million.local(str(self.work), self.p["million"], self.p["pack"], self.p["query"])
        self.built["million"] = {"store": local["url"]}
        return {"local": local, "s3": store_million.s3(self.p["s3_items"], self.p["query"])}

    def fig7(self) -> dict:
        import store_million

        if "million" not in self.built:
            local = store_million.local(str(self.work), self.p["million"], self.p["pack"], self.p["query"])
            self.built["million"] = {"store": local["url"]}
        return store_million.ls_gc(self.built["million"]["store"], self.p["million"])

    def fig8(self) -> dict:
        data = self.data("data_bare", 3, self.p["bare_per_cat"], 256, 0)
        work = self.work / "bare"
        work.mkdir(exist_ok=True)
        cold = orchestrated("cold", data, str(work / "store"), str(work), "tiny", [])
        loop = bare(data, str(work), "tiny")
        return {"cold": cold, "bare": loop, "cold_over_bare_image_work": cold["image_work_s"] / loop["image_work_s"]}


# ---------------------------------------------------------------------------------------------- measures
def store_ops_pair(own: str, shared: str, repeats: int = 25) -> dict:
    """store_ops on both stores, alternating (load from other work hits both alike); the same artifacts
    and item ids (those of ``own``) in both."""
    plan = warm_plan(own)
    times: dict[str, list[float]] = {"own": [], "shared": []}
    for _ in range(repeats):
        for name, url in (("own", own), ("shared", shared)):
            times[name].append(store_ops(url, plan, 1)["median_s"])
    ops = {k: {"median_s": statistics.median(v), "min_s": min(v), "all_s": v} for k, v in times.items()}
    return {"store_ops": ops, "ratio_store_ops": ops["shared"]["median_s"] / ops["own"]["median_s"],
            "ratio_store_ops_of_minimums": ops["shared"]["min_s"] / ops["own"]["min_s"]}


def ratios51(runs: dict[str, list[dict]]) -> dict:
    """Shared/own ratios of the warm runs' medians (and of their minimums, and without evaluation: the
    metrics' CPU time varies by a third between identical runs and swamps the store's part)."""
    for r in runs["own"] + runs["shared"]:
        r["flow_wall_without_evaluation_s"] = r["flow_wall_s"] - r["timings"].get("evaluation", 0)
    fields = ("flow_wall_s", "flow_wall_without_evaluation_s", "stage_s", "image_work_s", "process_wall_s")
    med = {k: {f: statistics.median(x[f] for x in v) for f in fields} for k, v in runs.items()}
    low = {k: {f: min(x[f] for x in v) for f in fields} for k, v in runs.items()}
    out = {"medians": med, "minimums": low}
    for f in fields:
        out[f"ratio_{f.removesuffix('_s')}"] = med["shared"][f] / med["own"][f]
    out["ratio_flow_wall_of_minimums"] = low["shared"]["flow_wall_s"] / low["own"]["flow_wall_s"]
    return out


def warm_plan(url: str) -> dict[str, list[str]]:
    """Artifact path -> item ids of every artifact in a store (what a warm rerun of its images asks for)."""
    from stores import ArtifactStore

    store = ArtifactStore(url)
    return {a.path: sorted(i for i, _ in store.index.iter_items(a.path)) for a in store.index.artifacts()}


def store_ops(url: str, plan: dict[str, list[str]], repeats: int = 5) -> dict:
    """What a warm rerun asks of the store, in-process: open it, look up the plan's items in each
    artifact, read every anomaly map pack by pack (as evaluation does: its images come in the order they
    were committed). Median seconds of ``repeats``."""
    from stores import ArtifactStore

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store = ArtifactStore(url)
        for path, items in plan.items():
            ref = store.ref(*path.split("/", 1))
            found = store.lookup(ref, items)
            assert len(found) == len(items), f"{path}: {len(found)} of {len(items)} items"
            if ref.stage == "anomaly_map":
                view = store.open(ref)
                for item in sorted(items, key=lambda i: (found[i].pack, found[i].row)):
                    view.read(item)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "all_s": times,
            "items_looked_up": sum(len(v) for v in plan.values())}


def inodes(root) -> int:
    """Files and directories under root (root itself not counted); 0 when it does not exist."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def index_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root) if f.startswith("_index.sqlite"))


def disk_bytes(root) -> tuple[int, int, int]:
    """(st_blocks * 512 over every file and directory, of which the index's, apparent file sizes)."""
    disk = index = apparent = 0
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(base, name))
            disk += st.st_blocks * 512
            if name.startswith("_index.sqlite"):
                index += st.st_blocks * 512
            if name in files:
                apparent += st.st_size
    return disk, index, apparent


def data_bytes(root) -> int:
    """Raw nbytes of every committed item's arrays, read back through the store API."""
    from stores import ArtifactStore

    store, total = ArtifactStore(root), 0
    for art in store.index.artifacts():
        view = store.open(store.ref(*art.path.split("/", 1)))
        for item, _ in store.index.iter_items(art.path):
            total += sum(a.nbytes for a in view.read(item).arrays.values())
    return total


def git_state() -> str:
    """HEAD and the files changed beside it (the store may be edited while the benchmark runs)."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()  # noqa: E731
    dirty = [line[3:] for line in git("status", "--short").splitlines() if line[3:].startswith(("stores/", "tasks/"))]
    return git("rev-parse", "--short", "HEAD") + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


# ---------------------------------------------------------------------------------------------- table
def headline(figs: dict) -> dict[str, float | str]:
    """ROWS key -> measured figure, from whichever figures were run (older result files may lack some)."""
    f = {str(k): v for k, v in figs.items()}

    def get(fig: str, *keys: str) -> float | str:
        value = f.get(fig, "not run")
        for key in keys:
            value = value.get(key, "not recorded") if isinstance(value, dict) else value
        return value

    out = {"inodes_saa": get("1", "saa", "inodes_per_image"), "inodes_plus": get("1", "saa-plus", "inodes_per_image"),
           "bytes_saa": get("2", "saa", "disk_over_data"), "bytes_plus": get("2", "saa-plus", "disk_over_data"),
           "round_trips": get("3", "round_trips_per_image"),
           "warm800": get("4", "warm_image_work_ms_per_image"),
           "warm800_store": get("4", "store_lookups_and_map_reads_ms_per_image"),
           "ratio51": get("5", "ratio_flow_wall"), "ratio51_store": get("5", "ratio_store_ops"),
           "ratio51_noeval": get("5", "ratio_flow_wall_without_evaluation"),
           "lookup_local": get("6", "local", "lookup_big", "median_s"),
           "lookup_s3": get("6", "s3", "lookup_big", "median_s"),
           "lookup_s3_small": get("6", "s3", "lookup_small", "median_s"),
           "ls": get("7", "ls_subprocess_s"), "gc": get("7", "gc_subprocess_s"),
           "cold_bare_tiny": get("8", "cold_over_bare_image_work"),
           "cold_bare_full": "not run (bench_saa.py --models random)"}
    return out


def table(figs: dict) -> str:
    got = headline(figs)
    lines = ["| figure | before | now | target | met |", "|---|---|---|---|---|"]
    for key, (label, before, target) in ROWS.items():
        now = got[key]
        met = "" if target is None or isinstance(now, str) else ("yes" if now <= target else "**no**")
        shown = now if isinstance(now, str) else f"{now:.3g}"
        lines.append(f"| {label} | {before} | {shown} | {'' if target is None else f'≤ {target}'} | {met} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated figure numbers (default: all)")
    ap.add_argument("--quick", action="store_true", help="small smoke version (-> store_scale_quick.json)")
    ap.add_argument("--keep", help="work folder to keep (default: a temp folder, removed)")
    args = ap.parse_args()
    os.chdir(REPO)
    only = [int(x) for x in args.only.split(",")] if args.only else list(range(1, 9))
    work = args.keep or tempfile.mkdtemp(prefix="anomflow-store-bench-")
    bench = Bench(work, QUICK if args.quick else FULL)
    dest = HERE / "results" / ("store_scale_quick.json" if args.quick else "store_scale.json")
    result = json.loads(dest.read_text()) if dest.exists() and args.only else {"figures": {}}
    try:
        for n in only:
            start = time.perf_counter()
            print(f"figure {n} ...", flush=True)
            result["figures"][str(n)] = getattr(bench, f"fig{n}")()
            result["figures"][str(n)]["bench_seconds"] = time.perf_counter() - start
            result["figures"][str(n)]["loadavg_1_5_15_after"] = os.getloadavg()   # other work on the machine
            print(f"figure {n}: {time.perf_counter() - start:.0f} s", flush=True)
            result.update(params=bench.p, machine=f"{os.cpu_count()} cores", created=time.strftime("%Y-%m-%d %H:%M"),
                          code=git_state())
            result["headline"] = headline(result["figures"])
            dest.write_text(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.quick:
        print(f"quick smoke run: sizes are {bench.p}, not those in the labels")
    print(table(result["figures"]))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
