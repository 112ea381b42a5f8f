"""The production-line deployment, without a server: what it registers, how its parameters travel as JSON, the
latest-run pointers, and its usage errors. tests/test_production_server.py serves and runs it for real."""
from __future__ import annotations

import json
import os
from typing import Any

import pytest
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.utilities.callables import parameter_schema
from pydantic import TypeAdapter

from deployments.production_line import build_deployment, main, production_line_flow, record_run
from tasks.config import ConfigError
from tasks.report.post_run import PostRunOptions


def test_deployment_carries_schedule_limit_and_parameters(tmp_path):
    post = PostRunOptions(webhook_url="http://127.0.0.1:9/hook", alert_anomaly_rate=0.1, thresholds="t.json")
    dep = build_deployment("saa", str(tmp_path), "*/30 * * * *", str(tmp_path / "store"), str(tmp_path / "out"),
                           ["box_threshold=0.2"], models_dir=str(tmp_path / "models"), post=post, allow_tiny=True)
    assert dep.name == f"saa-{tmp_path.name}" and dep.flow_name == "production-line"
    assert dep.schedules[0].schedule.cron == "*/30 * * * *"
    assert dep.concurrency_limit == 1
    assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    params = dep.parameters
    assert params["method"] == "saa" and params["config"]["box_threshold"] == 0.2
    assert params["config"]["models"]["sam"].startswith("tiny-")      # no official weights in models/
    assert params["root"] == str(tmp_path) and params["out"] == str(tmp_path / "out")
    assert params["ctx"].post == post and "production-line" in dep.tags
    ctx = params["ctx"]
    assert ctx.run_id == ""                                   # every scheduled run takes its own run id
    first, second = ctx.started(), ctx.started()
    assert first.run_id and second.run_id and first.run_id != second.run_id


def test_cancel_on_overlap_and_official_weights_without_allow_tiny(tmp_path):
    dep = build_deployment("saa", str(tmp_path), "0 * * * *", "s", "o", [], models_dir=str(tmp_path),
                           on_overlap="cancel")
    assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert not dep.parameters["config"]["models"]["sam"].startswith("tiny-")


def test_parameters_survive_the_json_trip_to_the_server(tmp_path):
    """The server stores the parameters as JSON; the runner validates them back into the flow's types."""
    post = PostRunOptions(webhook_url="http://127.0.0.1:9/hook", metric_floors=(("image_auroc", 0.7),))
    dep = build_deployment("saa", str(tmp_path), "0 * * * *", str(tmp_path / "store"), str(tmp_path / "out"), [],
                           models_dir=str(tmp_path), post=post, allow_tiny=True)
    # as the client sends them (DeploymentCreate.parameters: dict[str, Any], dumped in JSON mode)
    stored = json.loads(json.dumps(TypeAdapter(dict[str, Any]).dump_python(dep.parameters, mode="json")))
    parameter_schema(production_line_flow.fn)                 # the flow's schema can be built
    restored = production_line_flow.validate_parameters(stored)
    assert restored["ctx"] == dep.parameters["ctx"]           # tuples, the nested PostRunOptions and all
    assert restored["config"] == dep.parameters["config"]


def test_deployment_rejects_unknown_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        build_deployment("saa", str(tmp_path), "0 * * * *", "s", "o", ["nope=1"], models_dir=str(tmp_path))


def _summary(run_id: str, out) -> dict:
    return {"run_id": run_id, "report": str(out / run_id / "report.json"), "exit_code": 0, "images": 3,
            "failures": 0}


def test_record_run_points_latest_at_the_newest_run_and_keeps_history(tmp_path):
    report = {"decisions": {"files": {"csv": "d.csv", "parquet": "d.parquet"}, "anomaly_rate": 0.25},
              "validation": {"success": True}, "alerts": None}
    for run_id in ("20260101T000000-aaaaaaaa", "20260101T010000-bbbbbbbb"):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "report.json").write_text("{}")
        record_run(str(tmp_path), _summary(run_id, tmp_path), report)
    assert os.readlink(tmp_path / "latest") == "20260101T010000-bbbbbbbb"   # relative: the folder can move
    assert (tmp_path / "latest" / "report.json").is_file()
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["run_id"] == "20260101T010000-bbbbbbbb" and latest["anomaly_rate"] == 0.25
    assert latest["decisions"] == {"csv": "d.csv", "parquet": "d.parquet"} and latest["validation_success"] is True
    assert latest["report_html"] == str(tmp_path / "20260101T010000-bbbbbbbb" / "report.html")
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["run_id"] for h in history] == ["20260101T000000-aaaaaaaa", "20260101T010000-bbbbbbbb"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".latest")]   # no temporary left behind


@pytest.mark.parametrize("args, message", [
    (["--root", "/nonexistent/line"], "--root /nonexistent/line: no such folder"),
    (["--alert-anomaly-rate", "0.1"], "--alert-anomaly-rate needs --thresholds"),
    (["--alert-webhook", "ftp://x"], "--alert-webhook 'ftp://x': needs an http:// or https:// URL"),
    (["--set", "nope=1"], "unknown key"),
])
def test_usage_errors_exit_2_before_anything_is_served(tmp_path, capsys, args, message):
    base = ["--root", str(tmp_path), "--out", str(tmp_path / "out"), "--models-dir", str(tmp_path), "--print"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_serving_needs_a_prefect_server(tmp_path, capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["--root", str(tmp_path), "--out", str(tmp_path / "out"), "--models-dir", str(tmp_path),
                     "--allow-tiny"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
