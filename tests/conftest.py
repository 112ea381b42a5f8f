"""Shared fixtures. Prefect runs against a throw-away home, quietly, with no telemetry and no network."""
from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="anomflow-prefect-")
if os.environ.get("PYTEST_XDIST_WORKER") and os.path.basename(os.environ.get("PREFECT_HOME", "")).startswith(
        "anomflow-prefect-"):
    os.environ["PREFECT_HOME"] = _PREFECT_HOME   # each xdist worker its own (the controller's is inherited)
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # two workers on two cores: one torch thread each
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("ANOMFLOW_PREFECT_SERVER", "ephemeral")   # CLI subprocesses leave no server behind
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")   # busy 2-core machines
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import socket  # noqa: E402

import pytest  # noqa: E402

from tasks.datasets.synth import write_synthetic_mvtec  # noqa: E402
from tasks.models import calls  # noqa: E402
from tasks.models.loading import clear_model_cache  # noqa: E402


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    """A small synthetic MVTec-layout dataset shared (read-only) by the flow tests."""
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_mvtec(str(root), categories=2, images=4, seed=0, size=96)
    return str(root)


@pytest.fixture
def models_dir(tmp_path) -> str:
    """An empty models directory: official weights are absent, as in CI."""
    path = tmp_path / "models"
    path.mkdir()
    return str(path)


@pytest.fixture
def counters():
    calls.reset_counters()
    yield calls
    calls.reset_counters()


@pytest.fixture
def fresh_models():
    """Start with no memoised model and zeroed counters; forget the models afterwards."""
    clear_model_cache()
    calls.reset_counters()
    yield
    clear_model_cache()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


class S3Server:
    """A real S3-compatible server (moto's) on 127.0.0.1, one bucket; ``options`` are s3fs storage options."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = "anomflow-test"
        self.options = {"endpoint_url": self.endpoint, "key": "test", "secret": "test"}
        import s3fs

        s3fs.S3FileSystem(**self.options).mkdir(self.bucket)

    def env(self) -> dict[str, str]:
        """Environment that lets a child process or the CLI reach this server with a plain s3:// URL."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = S3Server()
    yield server
    server.server.stop()
