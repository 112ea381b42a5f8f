"""`anomflow run` reuses a local Prefect server that outlives it, and starts one when none answers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from flows.cli.prefect_server import choose_prefect_api, server_version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_explicit_url_and_ephemeral_mode_are_left_alone():
    env = {"PREFECT_API_URL": "http://example.invalid/api"}
    assert choose_prefect_api(env) is None and env["PREFECT_API_URL"] == "http://example.invalid/api"
    env = {"ANOMFLOW_PREFECT_SERVER": "ephemeral"}
    assert choose_prefect_api(env) is None and "PREFECT_API_URL" not in env


def test_a_run_starts_a_server_that_outlives_it_and_the_next_run_reuses_it(tmp_path, synth_root):
    port = _free_port()
    env = {**os.environ, "ANOMFLOW_PREFECT_SERVER": "auto", "ANOMFLOW_PREFECT_PORT": str(port),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    assert server_version(url) is None
    cmd = [sys.executable, "-m", "flows.cli.main", "run", "saa", "--dataset", "mvtec", "--root", synth_root,
           "--store", str(tmp_path / "store"), "--models-dir", str(tmp_path / "models"), "--allow-tiny",
           "--no-progress", "--category", "synth_texture"]
    try:
        first = subprocess.run(cmd + ["--out", str(tmp_path / "o1")], env=env, capture_output=True, text=True,
                               timeout=400)
        assert first.returncode == 0, first.stderr[-2000:]
        assert "started a Prefect server in the background" in first.stderr
        assert server_version(url) is not None            # still up after the run ended
        pid_file = tmp_path / "prefect-home" / "server.pid"
        pid = pid_file.read_text().strip()                 # Prefect's own PID file for a --background server
        second = subprocess.run(cmd + ["--out", str(tmp_path / "o2")], env=env, capture_output=True, text=True,
                                timeout=400)
        assert second.returncode == 0, second.stderr[-2000:]
        assert "ephemeral" not in second.stderr
        assert pid_file.read_text().strip() == pid         # the same server, not a new one
        report = json.load(open(tmp_path / "o2" / "report.json"))
        assert all(s["computed"] == 0 for s in report["stages"])
    finally:
        subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "prefect")), "server", "stop"], env=env,
                       capture_output=True, timeout=60)
    assert server_version(url) is None


def test_an_unknown_mode_falls_back_with_a_note(monkeypatch):
    monkeypatch.delitem(sys.modules, "prefect", raising=False)   # pretend Prefect is not imported yet
    env = {"ANOMFLOW_PREFECT_SERVER": "sometimes"}
    note = choose_prefect_api(env)
    assert note and "auto, ephemeral" in note and "PREFECT_API_URL" not in env


def test_a_bad_port_falls_back_with_a_note(monkeypatch):
    monkeypatch.delitem(sys.modules, "prefect", raising=False)
    env = {"ANOMFLOW_PREFECT_SERVER": "auto", "ANOMFLOW_PREFECT_PORT": "forty-two"}
    note = choose_prefect_api(env)
    assert note and "not a port number" in note and "PREFECT_API_URL" not in env


CHOICE_SPY = """
import json, sys
import flows.cli.prefect_server as prefect_server
seen = []
prefect_server.choose_prefect_api = lambda environ=None: seen.append("prefect" in sys.modules)
from typer.testing import CliRunner
from flows.cli.main import app
result = CliRunner().invoke(app, json.loads(sys.argv[1]))
print(json.dumps({"code": result.exit_code, "prefect_imported_at_choice": seen}))
"""


def test_every_command_that_runs_a_flow_picks_the_api_before_prefect_is_imported(tmp_path):
    """Once Prefect is imported its settings are fixed, and the choice would fall back to a per-process server."""
    missing = str(tmp_path / "no-such-root")
    common = ["--dataset", "mvtec", "--root", missing, "--store", str(tmp_path / "store")]
    for args in (["run", "saa", *common, "--out", str(tmp_path / "o")],
                 ["ablate", "saa-plus", *common, "--out", str(tmp_path / "a"), "--variant", "no-such-variant"],
                 ["calibrate", "saa", *common, "--out", str(tmp_path / "t.json")],
                 ["calibrate-areas", "sam-lad", *common, "--out", str(tmp_path / "areas.yaml")]):
        done = subprocess.run([sys.executable, "-c", CHOICE_SPY, json.dumps(args)], capture_output=True, text=True,
                              timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"code": 2, "prefect_imported_at_choice": [False]}, (args[0], result)
