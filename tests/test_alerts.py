"""Webhook alerts: a local HTTP server receives the JSON summary; no call when all is well; a dead webhook is
recorded in the result, never raised."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks import alerts
from tasks.alerts import send_alerts
from tasks.report.post_run import PostRunOptions


class Webhook:
    """An HTTP server on 127.0.0.1 that records every POST body and answers with ``self.status``."""

    def __init__(self):
        self.received: list[dict] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):   # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                hook.received.append({"content_type": self.headers["Content-Type"],
                                      "body": json.loads(self.rfile.read(length))})
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch):
    monkeypatch.setattr(alerts, "RETRY_PAUSE", 0.01)


def _report(validation_ok: bool | None = True, fails: int = 1, passes: int = 19) -> dict:
    """A report with the agreed ``decisions`` and ``validation`` sections (two categories)."""
    validation = None if validation_ok is None else {
        "success": validation_ok, "cached": False, "data_docs": "gx/index.html",
        "suites": {
            "manifest": {"version": "1", "success": True, "expectations": [
                {"expectation": "expect_column_values_to_not_be_null", "column": "path", "kwargs": {},
                 "success": True, "unexpected_count": 0, "unexpected_examples": []}]},
            "outputs": {"version": "2", "success": validation_ok, "expectations": [
                {"expectation": "expect_column_values_to_be_between", "column": "score",
                 "kwargs": {"min_value": 0, "max_value": 1}, "success": validation_ok,
                 "unexpected_count": 0 if validation_ok else 7,
                 "unexpected_examples": [] if validation_ok else [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]}]},
        }}
    counts = {"bottle": {"pass": passes - 9, "fail": fails}, "cable": {"pass": 9, "fail": 0}}
    decisions = {"thresholds_file": "t.json", "rule": {"bottle": "target_frr", "cable": "f1_max"},
                 "target_frr": 0.01, "thresholds": {"bottle": 0.4, "cable": 0.6}, "counts": counts,
                 "anomaly_rate": fails / (fails + passes), "files": {"parquet": "d.parquet", "csv": "d.csv"},
                 "notes": []}
    return {"run_id": "20260101T000000-abcd1234", "method": "saa", "created": "2026-01-01T00:00:00Z",
            "stand_in_models": True, "images": [{}] * (fails + passes), "failures": [],
            "decisions": decisions, "validation": validation}


def test_no_webhook_means_no_alert_section():
    assert send_alerts(PostRunOptions(), _report(validation_ok=False)) is None


def test_nothing_wrong_makes_no_call(webhook):
    post = PostRunOptions(webhook_url=webhook.url, alert_anomaly_rate=0.1)
    result = send_alerts(post, _report(validation_ok=True, fails=1, passes=19))   # rate 0.05 <= 0.1
    assert result == {"sent": False, "reasons": [], "status": None, "error": None}
    assert webhook.received == []
    # validation switched off and no rate threshold: nothing to alert on either
    assert send_alerts(PostRunOptions(webhook_url=webhook.url), _report(validation_ok=None, fails=15))["sent"] is False
    assert webhook.received == []


def test_failed_validation_and_high_rate_post_a_summary(webhook):
    post = PostRunOptions(webhook_url=webhook.url, alert_anomaly_rate=0.1)
    result = send_alerts(post, _report(validation_ok=False, fails=4, passes=16), report_path="/line/r1/report.json")
    assert result["sent"] is True and result["status"] == 200 and result["error"] is None
    assert len(result["reasons"]) == 2
    assert result["reasons"][0] == "validation failed: 1 expectation(s) failed in suite(s) outputs"
    assert result["reasons"][1] == "anomaly rate 0.2 above 0.1 (4 of 20 images failed)"
    [call] = webhook.received
    assert call["content_type"] == "application/json"
    body = call["body"]
    assert body["run_id"] == "20260101T000000-abcd1234" and body["method"] == "saa"
    assert body["reasons"] == result["reasons"] and body["report"] == "/line/r1/report.json"
    assert body["counts"] == {"bottle": {"pass": 7, "fail": 4}, "cable": {"pass": 9, "fail": 0}}
    assert (body["failed_images"], body["decided_images"], body["anomaly_rate"]) == (4, 20, 0.2)
    assert body["validation_success"] is False and body["alert_anomaly_rate"] == 0.1
    [failed] = body["failed_expectations"]
    assert failed["suite"] == "outputs" and failed["column"] == "score" and failed["unexpected_count"] == 7
    assert failed["unexpected_examples"] == [1.5, 2.0, 3.0, 4.0, 5.0]   # capped
    assert body["stand_in_models"] is True and body["images"] == 20


def test_rate_at_the_threshold_does_not_alert(webhook):
    post = PostRunOptions(webhook_url=webhook.url, alert_anomaly_rate=0.2)
    assert send_alerts(post, _report(fails=4, passes=16))["sent"] is False   # 0.2 is not above 0.2
    assert webhook.received == []


def test_a_dead_webhook_is_recorded_not_raised():
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    post = PostRunOptions(webhook_url=f"http://127.0.0.1:{port}/hook", alert_anomaly_rate=0.01)
    result = send_alerts(post, _report(fails=5, passes=15))
    assert result["sent"] is False and result["status"] is None
    assert "ConnectError" in result["error"] and "after 2 attempt(s)" in result["error"]
    assert result["reasons"] == ["anomaly rate 0.25 above 0.01 (5 of 20 images failed)"]


def test_a_server_error_is_retried_once_then_recorded(webhook):
    webhook.status = 503
    post = PostRunOptions(webhook_url=webhook.url, alert_anomaly_rate=0.01)
    result = send_alerts(post, _report(fails=5, passes=15))
    assert len(webhook.received) == 2                         # first try and one retry
    assert result["sent"] is False and result["status"] == 503 and result["error"].startswith("HTTP 503")
    webhook.received.clear()
    webhook.status = 404                                      # a client error is not retried
    result = send_alerts(post, _report(fails=5, passes=15))
    assert len(webhook.received) == 1 and result["status"] == 404 and "after 1 attempt(s)" in result["error"]
