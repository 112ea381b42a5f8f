"""Weight files on disk, the helpers verification (``weights``) and download (``pull``) share: layout, sha256,
the verification stamp, size/hash checks and the errors. No network here, and no import of either user.

Layout: ``<models_dir>/<spec.name>/<filename>``; stamp ``<models_dir>/<spec.name>/.anomflow-verified.json``
maps ``filename -> {"sha256", "size", "mtime_ns", "pinned"}``. A pinned file (registry sha256) must match
the registry; an unpinned one is trusted on first use and later compared with the recorded hash.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no inter-process lock around stamp updates
    fcntl = None

from tasks.models.registry import ModelSpec, WeightFile

STAMP_NAME = ".anomflow-verified.json"
LOCK_NAME = ".anomflow-verified.lock"
PARTIAL_DIR = ".partial"
MIRROR_ENV = "ANOMFLOW_MODELS_MIRROR"
BLOCK = 1 << 20


class WeightsMissingError(FileNotFoundError):
    """A weight file of an official model is not on disk; the message says how to get it."""

    def __init__(self, model: str, filename: str, expected_path: str | os.PathLike):
        self.model, self.filename, self.expected_path = model, filename, Path(expected_path)
        super().__init__(
            f"weights for model {model!r} are missing: file {filename!r} was expected at {self.expected_path}.\n"
            f"Download it with:\n  anomflow models pull {model}\n"
            f"or, if you already have the file:\n  anomflow models import {model} PATH"
        )

    def __str__(self) -> str:  # OSError would format "[Errno None] None: <filename>" since we set .filename
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.model, self.filename, str(self.expected_path)))


class WeightsVerificationError(RuntimeError):
    """A weight file does not match its pinned (or first recorded) sha256, or the registry's size."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 expected: str | int | None = None, actual: str | int | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.expected, self.actual = expected, actual


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def model_dir(spec: ModelSpec, models_dir: str | os.PathLike) -> Path:
    return Path(models_dir).expanduser().absolute() / spec.name


def weight_file(spec: ModelSpec, filename: str) -> WeightFile:
    for wf in spec.files:
        if wf.filename == filename:
            return wf
    known = ", ".join(wf.filename for wf in spec.files) or "(none: tiny model built from its seed)"
    raise ValueError(f"model {spec.name!r} has no file {filename!r}; its files: {known}")


def load_stamp(mdir: Path) -> dict:
    try:
        data = json.loads((mdir / STAMP_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def stamp_entry(mdir: Path, filename: str) -> dict | None:
    entry = load_stamp(mdir).get(filename)
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


@contextlib.contextmanager
def _stamp_lock(mdir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the stamp between processes (flock, released when the file closes)."""
    mdir.mkdir(parents=True, exist_ok=True)
    with open(mdir / LOCK_NAME, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record(spec: ModelSpec, mdir: Path, filename: str, sha: str) -> None:
    """Record ``filename``'s hash in the stamp (atomic: temp file + os.replace)."""
    st = (mdir / filename).stat()
    wf = weight_file(spec, filename)
    with _stamp_lock(mdir):
        stamp = load_stamp(mdir)
        stamp[filename] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "pinned": wf.sha256 is not None}
        fd, tmp = tempfile.mkstemp(dir=mdir, prefix=".stamp-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(stamp, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, mdir / STAMP_NAME)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check(wf: WeightFile, path: Path, size: int, sha: str, recorded: str | None) -> None:
    """Raise WeightsVerificationError unless (size, sha) fit the registry (or the recorded hash if unpinned)."""
    if wf.size is not None and size != wf.size:
        raise WeightsVerificationError(f"size mismatch for {path}: expected {wf.size} bytes, got {size}",
                                       path=path, expected=wf.size, actual=size)
    want = wf.sha256.lower() if wf.sha256 else recorded
    if want is not None and sha != want:
        how = "" if wf.sha256 else " (recorded when first pulled/imported; re-import the file if it is legitimate)"
        raise WeightsVerificationError(f"sha256 mismatch for {path}: expected {want}{how}, got {sha}",
                                       path=path, expected=want, actual=sha)
