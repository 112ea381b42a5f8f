"""Weight files on disk: presence, sha256 verification (with a stamp cache), ``pull`` and ``import``.

Layout: ``<models_dir>/<spec.name>/<filename>``; stamp ``<models_dir>/<spec.name>/.anomflow-verified.json``
maps ``filename -> {"sha256", "size", "mtime_ns", "pinned"}``. A pinned file (registry sha256) must match
the registry; an unpinned one is trusted on first use and later compared with the recorded hash.
Downloads go to ``.partial/<filename>.part`` (resumable) and are moved into place with ``os.replace`` only
after verification, so nothing half-written ever carries a final file name. Only :func:`pull` touches the
network.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no inter-process lock around stamp updates
    fcntl = None

from tasks.models import registry
from tasks.models.registry import ModelSpec, WeightFile

STAMP_NAME = ".anomflow-verified.json"
LOCK_NAME = ".anomflow-verified.lock"
PARTIAL_DIR = ".partial"
MIRROR_ENV = "ANOMFLOW_MODELS_MIRROR"
_BLOCK = 1 << 20
_PRIMARY_SUFFIXES = (".safetensors", ".pth", ".pt")


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


@dataclass(frozen=True)
class FileStatus:
    filename: str
    expected_sha256: str | None
    recorded_sha256: str | None
    path: Path
    present: bool
    size: int | None
    verified: bool = False  # stamp still matches the file (size, mtime_ns) and, if pinned, the registry hash


# ----------------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _model_dir(spec: ModelSpec, models_dir: str | os.PathLike) -> Path:
    return Path(models_dir).expanduser().absolute() / spec.name


def _weight_file(spec: ModelSpec, filename: str) -> WeightFile:
    for wf in spec.files:
        if wf.filename == filename:
            return wf
    known = ", ".join(wf.filename for wf in spec.files) or "(none: tiny model built from its seed)"
    raise ValueError(f"model {spec.name!r} has no file {filename!r}; its files: {known}")


def _load_stamp(mdir: Path) -> dict:
    try:
        data = json.loads((mdir / STAMP_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _entry(mdir: Path, filename: str) -> dict | None:
    entry = _load_stamp(mdir).get(filename)
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


@contextlib.contextmanager
def _stamp_lock(mdir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the stamp between processes (flock, released when the file closes)."""
    mdir.mkdir(parents=True, exist_ok=True)
    with open(mdir / LOCK_NAME, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _record(spec: ModelSpec, mdir: Path, filename: str, sha: str) -> None:
    """Record ``filename``'s hash in the stamp (atomic: temp file + os.replace)."""
    st = (mdir / filename).stat()
    wf = _weight_file(spec, filename)
    with _stamp_lock(mdir):
        stamp = _load_stamp(mdir)
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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check(wf: WeightFile, path: Path, size: int, sha: str, recorded: str | None) -> None:
    """Raise WeightsVerificationError unless (size, sha) fit the registry (or the recorded hash if unpinned)."""
    if wf.size is not None and size != wf.size:
        raise WeightsVerificationError(f"size mismatch for {path}: expected {wf.size} bytes, got {size}",
                                       path=path, expected=wf.size, actual=size)
    want = wf.sha256.lower() if wf.sha256 else recorded
    if want is not None and sha != want:
        how = "" if wf.sha256 else " (recorded when first pulled/imported; re-import the file if it is legitimate)"
        raise WeightsVerificationError(f"sha256 mismatch for {path}: expected {want}{how}, got {sha}",
                                       path=path, expected=want, actual=sha)


# ------------------------------------------------------------------------------------------------ status
def file_statuses(spec: ModelSpec, models_dir: str | os.PathLike) -> list[FileStatus]:
    mdir = _model_dir(spec, models_dir)
    out = []
    for wf in spec.files:
        path = mdir / wf.filename
        entry = _entry(mdir, wf.filename)
        try:
            st = path.stat()
            present = path.is_file()
        except OSError:
            st, present = None, False
        recorded = entry.get("sha256") if entry else None
        verified = bool(present and entry and entry.get("size") == st.st_size
                        and entry.get("mtime_ns") == st.st_mtime_ns
                        and (wf.sha256 is None or recorded == wf.sha256.lower())
                        and (wf.size is None or st.st_size == wf.size))
        out.append(FileStatus(wf.filename, wf.sha256, recorded, path, present,
                              st.st_size if present else None, verified))
    return out


def ensure_present(spec: ModelSpec, models_dir: str | os.PathLike) -> dict[str, Path]:
    """``{filename: path}`` for every file of ``spec``; WeightsMissingError for the first absent one."""
    if spec.tiny:
        return {}
    mdir = _model_dir(spec, models_dir)
    paths = {}
    for wf in spec.files:
        path = mdir / wf.filename
        if not path.is_file():
            raise WeightsMissingError(spec.name, wf.filename, path)
        paths[wf.filename] = path
    return paths


def verified_sha256(spec: ModelSpec, models_dir: str | os.PathLike, filename: str) -> str:
    """sha256 of one file of ``spec``; trusts the stamp while size and mtime_ns are unchanged, else rehashes.

    Pinned files must match the registry; unpinned files must match the hash recorded at first pull/import
    (a file that was never recorded is trusted now and recorded)."""
    wf = _weight_file(spec, filename)
    mdir = _model_dir(spec, models_dir)
    path = mdir / filename
    if not path.is_file():
        raise WeightsMissingError(spec.name, filename, path)
    st = path.stat()
    entry = _entry(mdir, filename)
    recorded = entry.get("sha256") if entry else None
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        _check(wf, path, st.st_size, recorded, None)
        return recorded
    sha = sha256_file(path)
    _check(wf, path, st.st_size, sha, recorded)
    _record(spec, mdir, filename, sha)
    return sha


def primary_weights_file(spec: ModelSpec) -> WeightFile:
    """The spec's main weights file: the first *.safetensors / *.pth / *.pt, else its first file."""
    return next((wf for wf in spec.files if wf.filename.endswith(_PRIMARY_SUFFIXES)), spec.files[0])


def checkpoint_path(spec: ModelSpec, models_dir: str | os.PathLike) -> Path:
    """Path of the main weights file after checking every file of the spec is present."""
    return ensure_present(spec, models_dir)[primary_weights_file(spec).filename]


def primary_weights_sha256(spec: ModelSpec, models_dir: str | os.PathLike) -> str:
    """sha256 of the spec's main weights file (first *.safetensors / *.pth / *.pt, else its first file).

    Tiny specs have no file; they get a stable digest of their name, seed and arch instead."""
    if not spec.files:
        ident = json.dumps({"name": spec.name, "seed": spec.seed, "arch": spec.arch}, sort_keys=True, default=repr)
        return hashlib.sha256(("tiny:" + ident).encode()).hexdigest()
    return verified_sha256(spec, models_dir, primary_weights_file(spec).filename)


# ------------------------------------------------------------------------------------------------ import
def _import_one(spec: ModelSpec, src: Path, mdir: Path, filename: str) -> Path:
    wf = _weight_file(spec, filename)
    final = mdir / filename
    mdir.mkdir(parents=True, exist_ok=True)
    if final.exists() and final.samefile(src):  # already in place: verify and record only, never rewrite
        sha = sha256_file(final)
        _check(wf, final, final.stat().st_size, sha, None)
        _record(spec, mdir, filename, sha)
        return final
    fd, tmp_name = tempfile.mkstemp(dir=mdir, prefix=f".{filename}.", suffix=".import.tmp")
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(_BLOCK):
                fout.write(block)
                h.update(block)
                size += len(block)
            fout.flush()
            os.fsync(fout.fileno())
        sha = h.hexdigest()
        # An explicit import re-establishes trust for unpinned files, so only the registry is checked.
        _check(wf, src, size, sha, None)
        shutil.copymode(src, tmp)
        os.replace(tmp, final)
        _fsync_dir(mdir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(spec, mdir, filename, sha)
    return final


def import_file(name: str, src: str | os.PathLike, models_dir: str | os.PathLike,
                filename: str | None = None) -> list[Path]:
    """Copy a local file (or the spec's files found in a directory) into the models dir, verified.

    A file is matched to the spec by ``filename``, else by its basename, else (single-file spec) to the
    only file. The source is never modified or moved. Raises KeyError (unknown model), FileNotFoundError /
    ValueError (bad path / cannot tell which file it is), WeightsVerificationError (hash/size mismatch)."""
    spec = registry.get_spec(name)
    if not spec.files:
        raise ValueError(f"model {name!r} is a tiny model built from its seed; it has no files to import")
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"no such file or directory: {src}")
    mdir = _model_dir(spec, models_dir)
    names = [wf.filename for wf in spec.files]
    if src.is_dir():
        pairs = [(src / f, f) for f in ([_weight_file(spec, filename).filename] if filename else names)
                 if filename or (src / f).is_file()]
        if not pairs:
            raise ValueError(f"none of the files of model {name!r} ({', '.join(names)}) are in {src}")
    else:
        if filename is None and src.name not in names and len(names) > 1:
            raise ValueError(f"cannot tell which file of model {name!r} {src.name!r} is; "
                             f"pass --file with one of: {', '.join(names)}")
        pairs = [(src, filename or (src.name if src.name in names else names[0]))]
    try:
        return [_import_one(spec, s, mdir, f) for s, f in pairs]
    finally:
        with contextlib.suppress(OSError):
            mdir.rmdir()  # only succeeds if the import left it empty


# pull lives in its own module (network code apart); re-exported here for callers.
from tasks.models.pull import pull  # noqa: E402,F401
