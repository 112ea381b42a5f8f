"""tasks.models.weights, tasks.models.pull and `anomflow models`: against a real HTTP server on 127.0.0.1 (loopback only)."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.models_cmd import models_app
from tasks.models import pull, registry, weights
from tasks.models.registry import ModelSpec, Preprocess, WeightFile
from tasks.models.weights import WeightsMissingError, WeightsVerificationError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not block aligned
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
PRE = Preprocess(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


# --------------------------------------------------------------------------------------------- server
class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "ok"  # ok | cut_once | corrupt | ignore_range
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()


def _make_handler(state: _State):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
                mode = state.mode
                if mode == "cut_once":
                    state.mode = "ok"
            data = state.files.get(name)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "corrupt":
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            if rng and mode != "ignore_range":
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "cut_once":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    state = _State()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/files"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _spec(name, files, tiny=False):
    return ModelSpec(name=name, family="sam", arch={}, files=tuple(files), preprocess=PRE, tiny=tiny,
                     source="test")


@pytest.fixture
def register(monkeypatch):
    def add(spec):
        monkeypatch.setitem(registry.MODEL_SPECS, spec.name, spec)
        return spec
    return add


def _stamp(models_dir, name):
    return json.loads((Path(models_dir) / name / weights.STAMP_NAME).read_text())


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ------------------------------------------------------------------------------------------------ pull
def test_pull_verifies_and_writes_atomically(server, register, tmp_path, monkeypatch):
    server.files["w.pth"] = PAYLOAD
    spec = register(_spec("t-pinned", [WeightFile("w.pth", PAYLOAD_SHA, f"{server.base}/w.pth", len(PAYLOAD))]))
    final = tmp_path / "t-pinned" / "w.pth"
    replaces = []
    real_replace = os.replace

    def spy(src, dst):
        if Path(dst) == final:
            replaces.append((Path(src), final.exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(pull.os, "replace", spy)
    paths = pull.pull("t-pinned", tmp_path, progress=False)

    assert paths == [final]
    assert final.read_bytes() == PAYLOAD
    # moved into place once, from the .partial dir, and the final name did not exist before
    assert len(replaces) == 1
    src, existed = replaces[0]
    assert src.name == "w.pth.part" and src.parent.name == weights.PARTIAL_DIR and not existed
    assert not (tmp_path / "t-pinned" / weights.PARTIAL_DIR).exists()
    entry = _stamp(tmp_path, "t-pinned")["w.pth"]
    assert entry["sha256"] == PAYLOAD_SHA and entry["pinned"] is True and entry["size"] == len(PAYLOAD)
    assert weights.verified_sha256(spec, tmp_path, "w.pth") == PAYLOAD_SHA
    assert weights.primary_weights_sha256(spec, tmp_path) == PAYLOAD_SHA
    # a second pull finds it present and verified: no new request
    n = len(server.requests)
    assert pull.pull("t-pinned", tmp_path, progress=False) == [final]
    assert len(server.requests) == n


def test_resume_after_cut_connection_uses_range(server, register, tmp_path):
    server.files["w.pth"] = PAYLOAD
    server.mode = "cut_once"
    register(_spec("t-resume", [WeightFile("w.pth", PAYLOAD_SHA, f"{server.base}/w.pth", len(PAYLOAD))]))
    final = tmp_path / "t-resume" / "w.pth"
    part = tmp_path / "t-resume" / weights.PARTIAL_DIR / "w.pth.part"

    with pytest.raises(RuntimeError, match="same command") as info:
        pull.pull("t-resume", tmp_path, progress=False)
    assert not isinstance(info.value, WeightsVerificationError)
    assert not final.exists()
    assert part.is_file()
    n = part.stat().st_size
    assert 0 < n < len(PAYLOAD)
    assert server.requests[-1][1] is None

    assert pull.pull("t-resume", tmp_path, progress=False) == [final]
    assert server.requests[-1][1] == f"bytes={n}-"
    assert final.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, register, tmp_path):
    server.files["w.pth"] = PAYLOAD
    server.mode = "ignore_range"
    register(_spec("t-norange", [WeightFile("w.pth", PAYLOAD_SHA, f"{server.base}/w.pth", len(PAYLOAD))]))
    part = tmp_path / "t-norange" / weights.PARTIAL_DIR / "w.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    pull.pull("t-norange", tmp_path, progress=False)
    assert server.requests[-1][1] == "bytes=1000-"
    assert (tmp_path / "t-norange" / "w.pth").read_bytes() == PAYLOAD  # not prefix + whole file


def test_corrupted_download_leaves_nothing(server, register, tmp_path):
    server.files["w.pth"] = PAYLOAD
    server.mode = "corrupt"
    register(_spec("t-corrupt", [WeightFile("w.pth", PAYLOAD_SHA, f"{server.base}/w.pth", len(PAYLOAD))]))
    with pytest.raises(WeightsVerificationError) as info:
        pull.pull("t-corrupt", tmp_path, progress=False)
    assert PAYLOAD_SHA in str(info.value)
    assert not (tmp_path / "t-corrupt" / "w.pth").exists()
    assert not (tmp_path / "t-corrupt" / weights.PARTIAL_DIR / "w.pth.part").exists()
    assert _all_files(tmp_path) == []


def test_size_mismatch_is_verification_error(server, register, tmp_path):
    server.files["w.pth"] = PAYLOAD
    register(_spec("t-size", [WeightFile("w.pth", None, f"{server.base}/w.pth", len(PAYLOAD) + 1)]))
    with pytest.raises(WeightsVerificationError, match="size"):
        pull.pull("t-size", tmp_path, progress=False)
    assert _all_files(tmp_path) == []


def test_network_error_is_clear_runtime_error(register, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    register(_spec("t-down", [WeightFile("w.pth", PAYLOAD_SHA, f"http://127.0.0.1:{port}/w.pth", None)]))
    with pytest.raises(RuntimeError, match="anomflow models pull t-down"):
        pull.pull("t-down", tmp_path, progress=False)
    assert not (tmp_path / "t-down" / "w.pth").exists()


def test_mirror_env_replaces_url(server, register, tmp_path, monkeypatch):
    server.files["w.pth"] = PAYLOAD
    register(_spec("t-mirror", [WeightFile("w.pth", PAYLOAD_SHA, "http://127.0.0.1:9/nowhere/w.pth", None)]))
    monkeypatch.setenv(weights.MIRROR_ENV, server.base + "/")
    pull.pull("t-mirror", tmp_path, progress=False)
    assert server.requests[-1][0] == "/files/w.pth"
    assert (tmp_path / "t-mirror" / "w.pth").read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------- trust on first use
def test_unpinned_hash_recorded_and_tampering_detected(server, register, tmp_path, monkeypatch):
    server.files["cfg.json"] = PAYLOAD
    spec = register(_spec("t-tofu", [WeightFile("cfg.json", None, f"{server.base}/cfg.json", None)]))
    pull.pull("t-tofu", tmp_path, progress=False)
    entry = _stamp(tmp_path, "t-tofu")["cfg.json"]
    assert entry["sha256"] == PAYLOAD_SHA and entry["pinned"] is False

    calls = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p) or real(p))
    assert weights.verified_sha256(spec, tmp_path, "cfg.json") == PAYLOAD_SHA
    assert calls == []  # stamp trusted: size and mtime unchanged, no rehash

    path = tmp_path / "t-tofu" / "cfg.json"
    st = path.stat()
    path.write_bytes(b"X" + PAYLOAD[1:])  # same size, new mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(WeightsVerificationError, match=PAYLOAD_SHA):
        weights.verified_sha256(spec, tmp_path, "cfg.json")
    assert len(calls) == 1
    # a different size is detected too
    path.write_bytes(PAYLOAD + b"!")
    with pytest.raises(WeightsVerificationError):
        weights.verified_sha256(spec, tmp_path, "cfg.json")
    assert [s.verified for s in weights.file_statuses(spec, tmp_path)] == [False]


def test_pinned_file_replaced_on_disk_is_rejected(tmp_path, register):
    src = tmp_path / "w.pth"
    src.write_bytes(PAYLOAD)
    spec = register(_spec("t-pin2", [WeightFile("w.pth", PAYLOAD_SHA, None, None)]))
    models = tmp_path / "models"
    weights.import_file("t-pin2", src, models)
    final = models / "t-pin2" / "w.pth"
    final.write_bytes(b"evil")
    with pytest.raises(WeightsVerificationError, match=PAYLOAD_SHA):
        weights.verified_sha256(spec, models, "w.pth")


# -------------------------------------------------------------------------------------------- import
def test_import_file_good_and_bad(tmp_path, register):
    spec = register(_spec("t-imp", [WeightFile("w.pth", PAYLOAD_SHA, None, len(PAYLOAD))]))
    models = tmp_path / "models"
    bad = tmp_path / "elsewhere" / "w.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"Z" + PAYLOAD[1:])
    bad_stat = bad.stat()
    with pytest.raises(WeightsVerificationError, match=PAYLOAD_SHA):
        weights.import_file("t-imp", bad, models)
    assert _all_files(models) == []
    assert bad.read_bytes() == b"Z" + PAYLOAD[1:] and bad.stat().st_mtime_ns == bad_stat.st_mtime_ns

    good = tmp_path / "elsewhere" / "renamed.bin"  # single-file spec: basename need not match
    good.write_bytes(PAYLOAD)
    good_stat = good.stat()
    assert weights.import_file("t-imp", good, models) == [models / "t-imp" / "w.pth"]
    assert (models / "t-imp" / "w.pth").read_bytes() == PAYLOAD
    assert good.exists() and good.stat().st_mtime_ns == good_stat.st_mtime_ns
    assert _stamp(models, "t-imp")["w.pth"]["sha256"] == PAYLOAD_SHA
    assert weights.file_statuses(spec, models)[0].verified
    assert not [p for p in (models / "t-imp").iterdir() if p.name.endswith(".tmp")]


def test_import_directory_and_file_option(tmp_path, register):
    cfg = b'{"a": 1}'
    spec = register(_spec("t-multi", [WeightFile("model.safetensors", PAYLOAD_SHA, None, None),
                                      WeightFile("config.json", None, None, None)]))
    src = tmp_path / "dl"
    src.mkdir()
    (src / "model.safetensors").write_bytes(PAYLOAD)
    (src / "config.json").write_bytes(cfg)
    models = tmp_path / "models"
    cfg_copy = tmp_path / "cfg-copy.json"  # basename matches none of the files of a multi-file spec
    cfg_copy.write_bytes(cfg)
    with pytest.raises(ValueError, match="--file"):
        weights.import_file("t-multi", cfg_copy, models)
    weights.import_file("t-multi", cfg_copy, models, filename="config.json")
    assert [s.present for s in weights.file_statuses(spec, models)] == [False, True]
    paths = weights.import_file("t-multi", src, models)
    assert sorted(p.name for p in paths) == ["config.json", "model.safetensors"]
    assert weights.ensure_present(spec, models) == {"model.safetensors": models / "t-multi" / "model.safetensors",
                                                   "config.json": models / "t-multi" / "config.json"}
    assert _stamp(models, "t-multi")["config.json"] == {**_stamp(models, "t-multi")["config.json"],
                                                        "sha256": hashlib.sha256(cfg).hexdigest(), "pinned": False}
    assert weights.primary_weights_sha256(spec, models) == PAYLOAD_SHA


# ----------------------------------------------------------------------------------- missing / tiny
def test_missing_error_names_path_and_commands(tmp_path, register):
    spec = register(_spec("t-miss", [WeightFile("w.pth", PAYLOAD_SHA, None, None)]))
    with pytest.raises(WeightsMissingError) as info:
        weights.ensure_present(spec, tmp_path)
    err = info.value
    expected = (tmp_path / "t-miss" / "w.pth").absolute()
    assert isinstance(err, FileNotFoundError)
    assert err.model == "t-miss" and err.filename == "w.pth" and err.expected_path == expected
    msg = str(err)
    assert str(expected) in msg
    assert "anomflow models pull t-miss" in msg and "anomflow models import t-miss PATH" in msg
    with pytest.raises(WeightsMissingError):
        weights.verified_sha256(spec, tmp_path, "w.pth")


def test_tiny_spec_needs_no_files(tmp_path):
    spec = registry.get_spec("tiny-sam")
    assert spec.tiny and weights.ensure_present(spec, tmp_path) == {}
    assert weights.file_statuses(spec, tmp_path) == []
    a = weights.primary_weights_sha256(spec, tmp_path)
    assert a == weights.primary_weights_sha256(spec, tmp_path) and len(a) == 64
    assert a != weights.primary_weights_sha256(registry.get_spec("tiny-gdino"), tmp_path)
    assert not tmp_path.joinpath("tiny-sam").exists()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_list_import_and_errors(tmp_path, register):
    register(_spec("t-cli", [WeightFile("w.pth", PAYLOAD_SHA, None, None)]))
    models = tmp_path / "models"
    runner = CliRunner()

    res = runner.invoke(models_app, ["list", "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("t-cli "))
    assert "MISSING -> anomflow models pull t-cli" in line and PAYLOAD_SHA in line
    assert str(models.absolute()) in res.output
    assert "built from seed (tiny)" in res.output and "not pinned" in res.output  # tiny-sam, gdino

    bad = tmp_path / "w.pth"
    bad.write_bytes(b"nope")
    res = runner.invoke(models_app, ["import", "t-cli", str(bad), "--models-dir", str(models)])
    assert res.exit_code == 1 and "mismatch" in res.output
    assert _all_files(models) == [] and bad.read_bytes() == b"nope"

    good = tmp_path / "good.pth"
    good.write_bytes(PAYLOAD)
    res = runner.invoke(models_app, ["import", "t-cli", str(good), "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(models_app, ["list", "--models-dir", str(models)])
    line = next(ln for ln in res.output.splitlines() if ln.startswith("t-cli "))
    assert "present (verified)" in line and "MISSING" not in line

    res = runner.invoke(models_app, ["pull", "no-such-model", "--models-dir", str(models)])
    assert res.exit_code == 2 and "t-cli" in res.output and "sam-vit-b" in res.output
    res = runner.invoke(models_app, ["import", "no-such-model", str(good), "--models-dir", str(models)])
    assert res.exit_code == 2


def test_cli_pull_with_mirror(server, register, tmp_path):
    server.files["w.pth"] = PAYLOAD
    register(_spec("t-clipull", [WeightFile("w.pth", PAYLOAD_SHA, "http://127.0.0.1:9/x/w.pth", None)]))
    models = tmp_path / "models"
    runner = CliRunner()
    args = ["pull", "t-clipull", "--models-dir", str(models), "--mirror", server.base, "--no-progress"]
    server.mode = "corrupt"
    res = runner.invoke(models_app, args)
    assert res.exit_code == 1 and "verification failed" in res.output
    assert _all_files(models) == []
    server.mode = "ok"
    res = runner.invoke(models_app, args)
    assert res.exit_code == 0, res.output
    assert (models / "t-clipull" / "w.pth").read_bytes() == PAYLOAD
    res = runner.invoke(models_app, ["list", "--models-dir", str(models)])
    assert "present (verified)" in next(ln for ln in res.output.splitlines() if ln.startswith("t-clipull "))
