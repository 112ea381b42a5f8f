"""The production-line deployment served against a real Prefect server, on SQLite (the embedded default) and on
PostgreSQL 15: triggered through the API client, two overlapping runs share the work of one, images added
between runs are scored by the next run, and every run leaves its report (and decisions) in its own folder.

PostgreSQL: ``$ANOMFLOW_TEST_POSTGRES_URL`` (.ci/run sources .ci/postgres.sh), else this file starts a cluster
with the same script, and skips only when the PostgreSQL 15 binaries are absent.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tasks.datasets.synth import write_synthetic_mvtec
from tests.flow_helpers import run_cli
from tests.test_alerts import Webhook

REPO = Path(__file__).resolve().parents[1]
PG_SCRIPT = REPO / ".ci" / "postgres.sh"
RUN_TIMEOUT = 300          # seconds for a flow run to finish on a busy 2-core machine
START_TIMEOUT = 180        # seconds for the server / the served deployment to come up
YEARLY = "0 0 1 1 *"       # a real schedule that triggers nothing during the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` (and the process log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{_tail(log)}")
        time.sleep(0.5)
    pytest.fail(f"{what}: not after {timeout:.0f} s\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-4000:] if log and log.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)   # the process group we started (uvicorn / runner children)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


@contextmanager
def prefect_server(tmp: Path, database_url: str | None):
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; yields (API URL, process, its log)."""
    port, log = _free_port(), tmp / "server.log"
    env = _base_env(tmp / "server-home")
    env.update(PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1",   # a queued run retries soon
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")              # schedules runs soon
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    cmd = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port",
           str(port), "--no-ui", "--analytics-off"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return httpx.get(f"{url}/health", timeout=1).json() is True
        except (httpx.HTTPError, ValueError):
            return False
    try:
        _wait("prefect server start", healthy, START_TIMEOUT, proc, log)
        yield url, proc, log
    finally:
        _stop(proc)


@contextmanager
def served_line(tmp: Path, api_url: str, line: Path, extra: list[str]):
    """``python -m deployments.production_line`` serving the line folder; yields the deployment's full name."""
    name, log = f"line-{tmp.name}"[:60], tmp / "serve.log"
    env = _base_env(tmp / "serve-home")
    env.update(PREFECT_API_URL=api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    cmd = [sys.executable, "-m", "deployments.production_line", "--root", str(line), "--cron", YEARLY,
           "--store", str(tmp / "store"), "--out", str(tmp / "out"), "--models-dir", str(tmp / "models"),
           "--allow-tiny", "--name", name, *extra]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"production-line/{name}", proc, log
    finally:
        _stop(proc)


@contextmanager
def api_client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            yield client


def _finished(client, run_id):
    run = client.read_flow_run(run_id)
    return run if run.state is not None and run.state.is_final() else None


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, Path, str]:
    """A synthetic category (64 px) and thresholds.json calibrated on its train/good images (target FRR 0.2):
    (synthetic root, thresholds file, category)."""
    tmp = tmp_path_factory.mktemp("calibrated")
    synth = tmp / "synth"
    [category] = write_synthetic_mvtec(str(synth), categories=1, images=4, seed=3, size=64)
    thresholds = tmp / "thresholds.json"
    code, output = run_cli("calibrate", "saa", "--dataset", "mvtec", "--root", str(synth), "--target-frr", "0.2",
                           "--out", str(thresholds), "--store", str(tmp / "store"), "--models-dir",
                           str(tmp / "models"), "--allow-tiny", "--report", str(tmp / "calibration"))
    assert code == 0 and thresholds.is_file(), output
    return synth, thresholds, category


def _write_line(tmp: Path, synth: Path, category: str) -> tuple[Path, list[Path]]:
    """The line folder gets 3 of the category's 4 test images now; the last one (returned) comes later."""
    images = sorted((synth / category / "test").rglob("*.png"))
    line = tmp / "line" / category
    line.mkdir(parents=True)
    for image in images[:3]:
        shutil.copy(image, line / f"{image.parent.name}_{image.name}")
    return line.parent, images[3:]


def _run_reports(out: Path) -> dict[str, dict]:
    """run id -> report.json, for every run folder under ``out``."""
    return {p.name: json.loads((p / "report.json").read_text()) for p in out.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / "report.json").exists()}


def _computed(report: dict) -> dict[str, int]:
    return {s["name"]: s["computed"] for s in report["stages"]}


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("ANOMFLOW_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    started = subprocess.run(["bash", str(PG_SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if started.returncode == 3:
        pytest.skip(f"PostgreSQL 15 is not installed: {started.stderr.strip()}")
    assert started.returncode == 0, f"{PG_SCRIPT} start failed:\n{started.stderr[-3000:]}"
    url, cluster = started.stdout.strip().splitlines()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), "stop", cluster], capture_output=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


def test_served_line_runs_overlap_without_duplicate_work_and_pick_up_new_images(tmp_path, database_url,
                                                                                 calibrated):
    synth, thresholds, category = calibrated
    line, later_images = _write_line(tmp_path, synth, category)
    out, webhook = tmp_path / "out", Webhook()
    options = ["--thresholds", str(thresholds), "--alert-webhook", webhook.url, "--alert-anomaly-rate", "0.2",
               "--no-validation"]   # validation has its own tests; here it would only add time
    with prefect_server(tmp_path, database_url) as (api_url, server_proc, server_log), \
            served_line(tmp_path, api_url, line, options) as (deployment_name, serve_proc, serve_log), \
            api_client(api_url) as client:
        deployment = _wait("the served deployment", lambda: _read_deployment(client, deployment_name),
                           START_TIMEOUT, serve_proc, serve_log)
        assert deployment.global_concurrency_limit.limit == 1 and deployment.paused is False
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
        # the cron schedule is the server's: its scheduler places runs at the schedule's times
        scheduled = _wait("runs placed by the server's scheduler", lambda: _scheduled_runs(client, deployment.id),
                          60, server_proc, server_log)
        assert all(r.expected_start_time.strftime("%m-%d %H:%M:%S") == "01-01 00:00:00" for r in scheduled)

        # two runs at once: the concurrency limit queues one; together they do the work of one run
        first, second = (client.create_flow_run_from_deployment(deployment.id) for _ in range(2))
        runs = [_wait(f"flow run {r.name}", lambda r=r: _finished(client, r.id), RUN_TIMEOUT, serve_proc, serve_log)
                for r in (first, second)]
        assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state.message for r in runs]
        a, b = sorted(runs, key=lambda r: r.start_time)
        assert b.start_time >= a.end_time                       # never ran at the same time
        waited = {s.name for r in runs for s in client.read_flow_run_states(r.id)}
        assert "AwaitingConcurrencySlot" in waited              # the second came due while the first ran
        reports = _run_reports(out)
        assert len(reports) == 2
        first_report, second_report = sorted(reports.values(), key=lambda r: r["created"])
        assert len(first_report["images"]) == len(second_report["images"]) == 3
        computed_a, computed_b = _computed(first_report), _computed(second_report)
        assert sum(computed_a.values()) > 0
        one_run = {s["name"]: s["computed"] + s["reused"] for s in first_report["stages"]}
        assert {k: computed_a[k] + computed_b[k] for k in one_run} == one_run
        assert os.readlink(out / "latest") == second_report["run_id"]

        # images that arrive after a run are scored by the next one, and only they are computed
        for image in later_images:
            shutil.copy(image, line / category / f"late_{image.parent.name}_{image.name}")
        third = client.create_flow_run_from_deployment(deployment.id)
        third = _wait("the run after new images", lambda: _finished(client, third.id), RUN_TIMEOUT, serve_proc,
                      serve_log)
        assert third.state.is_completed(), third.state.message
    webhook.close()
    latest = json.loads((out / "latest.json").read_text())
    run_dir = out / latest["run_id"]
    report = json.loads((run_dir / "report.json").read_text())
    assert latest["run_id"] not in reports and os.readlink(out / "latest") == latest["run_id"]
    assert len(report["images"]) == 3 + len(later_images)
    assert max(_computed(report).values()) == len(later_images)
    assert (run_dir / "report.html").is_file()
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["run_id"] for h in history] == [first_report["run_id"], second_report["run_id"], latest["run_id"]]

    # decisions: one row per image, the new ones included, in the run's own folder
    decisions = report["decisions"]
    assert latest["decisions"] == decisions["files"] == {"parquet": str(run_dir / "decisions.parquet"),
                                                         "csv": str(run_dir / "decisions.csv")}
    with open(run_dir / "decisions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in (line / category).iterdir())
    assert {r["decision"] for r in rows} <= {"pass", "fail"} and all(r["threshold"] for r in rows)
    assert sum(decisions["counts"][category].values()) == len(rows)

    # alerts: the webhook heard from exactly the runs whose anomaly rate was above 0.2
    alerted = [r["run_id"] for r in (first_report, second_report, report) if r["decisions"]["anomaly_rate"] > 0.2]
    assert alerted and [call["body"]["run_id"] for call in webhook.received] == alerted
    assert all(r["alerts"]["sent"] == (r["run_id"] in alerted) for r in (first_report, second_report, report))


def _read_deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _scheduled_runs(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, \
        FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
    return [r for r in runs if r.auto_scheduled] or None
