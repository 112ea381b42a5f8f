"""The production-line deployment is built with the method's validated config and a cron schedule."""
from __future__ import annotations

import pytest

from deployments.production_line import build_deployment
from tasks.config import ConfigError


def test_deployment_carries_schedule_and_parameters(tmp_path):
    dep = build_deployment("saa", str(tmp_path), "*/30 * * * *", str(tmp_path / "store"), str(tmp_path / "out"),
                           ["box_threshold=0.2"])
    assert dep.name == f"saa-{tmp_path.name}"
    assert dep.schedules[0].schedule.cron == "*/30 * * * *"
    assert dep.parameters["config"].box_threshold == 0.2
    assert dep.parameters["dataset"].kind == "folder" and "production-line" in dep.tags
    ctx = dep.parameters["ctx"]
    assert ctx.run_id == ""                                   # every scheduled run takes its own run id
    first, second = ctx.started(), ctx.started()
    assert first.run_id and second.run_id and first.run_id != second.run_id


def test_deployment_rejects_unknown_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        build_deployment("saa", str(tmp_path), "0 * * * *", "s", "o", ["nope=1"])
