"""What keeps a warm `anomflow run` short (issue 9): flow parameters serialised without FastAPI, no idle wait for the
flow-run heartbeat thread, start-up imports without the cyclic collector. The whole-process figure is a benchmark
(benchmarks/bench_startup.py), never a timed test; tests/test_validation.py checks what a warm run leaves unimported."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli.startup import imports_without_gc
from tasks.engine.context import RunContext
from tasks.engine.flow import MethodFlow
from tasks.engine.run_state import DatasetSpec
from tasks.report.post_run import PostRunOptions
from tasks.saa.config import SAAConfig

ROOT = Path(__file__).resolve().parents[1]


def _flows() -> dict[str, object]:
    from deployments.production_line import production_line_flow
    from flows.ablate import ablate_saa_plus_flow
    from flows.calibrate import calibrate_sam_lad_flow
    from flows.calibrate_thresholds import calibrate_thresholds_flow
    from flows.saa import saa_flow
    from flows.saa_plus import saa_plus_flow
    from flows.sam_lad import sam_lad_flow
    return {f.name: f for f in (saa_flow, saa_plus_flow, sam_lad_flow, ablate_saa_plus_flow, calibrate_sam_lad_flow,
                                calibrate_thresholds_flow, production_line_flow)}


def test_every_flow_is_a_method_flow():
    flows = _flows()
    assert len(flows) == 7 and all(isinstance(f, MethodFlow) for f in flows.values()), flows


def test_parameters_serialise_as_prefects_own_encoder_does():
    from fastapi.encoders import jsonable_encoder   # what Prefect's Flow.serialize_parameters uses

    ctx = RunContext(store_url="/s", models_dir="/m", dataset_root="/d", model_resources=(("GPU", 1.0),),
                     post=PostRunOptions(thresholds="t.json", metric_floors=(("image_auroc", 0.7),))).started()
    parameters = {"config": SAAConfig(), "ctx": ctx, "dataset": DatasetSpec("mvtec", "/d", ("a", "b"),
                                                                            support_splits=("train",)),
                  "out_dir": "out", "save_maps_dir": None, "path": Path("/x/y"), "numbers": (1, 2.5, float("inf")),
                  "unserialisable": object()}
    ours = _flows()["saa"].serialize_parameters(parameters)
    prefects = {}
    for key, value in parameters.items():
        try:
            prefects[key] = jsonable_encoder(value)
        except (TypeError, ValueError):
            prefects[key] = f"<{type(value).__name__}>"
    assert ours == prefects
    assert ours["unserialisable"] == "<object>" and ours["dataset"]["categories"] == ["a", "b"]


def test_serialising_parameters_imports_no_fastapi():
    child = ("import json, sys\nfrom flows.saa import saa_flow\nfrom tasks.saa.config import SAAConfig\n"
             "saa_flow.serialize_parameters({'config': SAAConfig(), 'out_dir': 'o'})\n"
             "print(json.dumps('fastapi' in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is False


@pytest.mark.parametrize("env, expected", [({}, None), ({"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}, 60),
                                           ({"PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "45"}, 45)])
def test_cli_flow_runs_send_no_heartbeats_unless_set(env, expected, tmp_path):
    child = ("import json\nfrom prefect.settings import get_current_settings\n"
             "from flows.cli.prefect_server import flow_run_settings\n"
             "with flow_run_settings():\n    inside = get_current_settings().flows.heartbeat_frequency\n"
             "print(json.dumps([inside, get_current_settings().flows.heartbeat_frequency]))\n")
    base = {k: v for k, v in os.environ.items() if "HEARTBEAT" not in k}
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**base, **env, "PREFECT_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    inside, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert inside == expected and after == (expected or 180)   # Prefect's default is restored after the run


def test_a_cli_run_calls_its_flow_under_those_settings(synth_root, tmp_path):
    from prefect.settings import get_current_settings

    from flows.cli.run_cmd import execute

    seen = {}

    def flow(**kwargs):
        seen["heartbeat"] = get_current_settings().flows.heartbeat_frequency
        seen["gc"] = gc.isenabled()
        return {"report": "not run"}

    outcome = execute("saa", "mvtec", synth_root, ["synth_texture"], str(tmp_path / "store"), str(tmp_path / "out"),
                      [], str(tmp_path / "models"), None, False, True, None, "cpu", False, flow_override=flow)
    assert outcome == {"report": "not run"}
    assert seen == {"heartbeat": None, "gc": True}


def test_imports_without_gc_restores_the_collector_and_freezes_start_up_objects():
    assert gc.isenabled()
    before = gc.get_freeze_count()
    kept = [object() for _ in range(10)]
    with imports_without_gc():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() >= before + len(kept)
    with pytest.raises(RuntimeError):
        with imports_without_gc():
            raise RuntimeError("a usage error inside the block")
    assert gc.isenabled()
    gc.disable()
    try:
        with imports_without_gc():
            pass
        assert not gc.isenabled()   # a collector that was off stays off
    finally:
        gc.enable()
        gc.unfreeze()
