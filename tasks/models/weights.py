"""Weight files of a model: presence, sha256 verification (with a stamp cache) and ``import`` of local copies.

Layout and stamp: see :mod:`tasks.models.weight_files`. Nothing here touches the network; downloads are
:mod:`tasks.models.pull` (which uses this module, never the other way round). Imports copy to a temporary name and
are moved into place with ``os.replace`` only after verification.
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

from tasks.models import registry
from tasks.models.registry import ModelSpec, WeightFile
from tasks.models.weight_files import (BLOCK, LOCK_NAME, MIRROR_ENV, PARTIAL_DIR, STAMP_NAME,  # noqa: F401 (API)
                                       WeightsMissingError, WeightsVerificationError, check, fsync_dir, model_dir,
                                       record, sha256_file, stamp_entry, weight_file)

_PRIMARY_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class FileStatus:
    filename: str
    expected_sha256: str | None
    recorded_sha256: str | None
    path: Path
    present: bool
    size: int | None
    verified: bool = False  # stamp still matches the file (size, mtime_ns) and, if pinned, the registry hash


# ------------------------------------------------------------------------------------------------ status
def file_statuses(spec: ModelSpec, models_dir: str | os.PathLike) -> list[FileStatus]:
    mdir = model_dir(spec, models_dir)
    out = []
    for wf in spec.files:
        path = mdir / wf.filename
        entry = stamp_entry(mdir, wf.filename)
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
    mdir = model_dir(spec, models_dir)
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
    wf = weight_file(spec, filename)
    mdir = model_dir(spec, models_dir)
    path = mdir / filename
    if not path.is_file():
        raise WeightsMissingError(spec.name, filename, path)
    st = path.stat()
    entry = stamp_entry(mdir, filename)
    recorded = entry.get("sha256") if entry else None
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        check(wf, path, st.st_size, recorded, None)
        return recorded
    sha = sha256_file(path)
    check(wf, path, st.st_size, sha, recorded)
    record(spec, mdir, filename, sha)
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
    wf = weight_file(spec, filename)
    final = mdir / filename
    mdir.mkdir(parents=True, exist_ok=True)
    if final.exists() and final.samefile(src):  # already in place: verify and record only, never rewrite
        sha = sha256_file(final)
        check(wf, final, final.stat().st_size, sha, None)
        record(spec, mdir, filename, sha)
        return final
    fd, tmp_name = tempfile.mkstemp(dir=mdir, prefix=f".{filename}.", suffix=".import.tmp")
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(BLOCK):
                fout.write(block)
                h.update(block)
                size += len(block)
            fout.flush()
            os.fsync(fout.fileno())
        sha = h.hexdigest()
        # An explicit import re-establishes trust for unpinned files, so only the registry is checked.
        check(wf, src, size, sha, None)
        shutil.copymode(src, tmp)
        os.replace(tmp, final)
        fsync_dir(mdir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record(spec, mdir, filename, sha)
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
    mdir = model_dir(spec, models_dir)
    names = [wf.filename for wf in spec.files]
    if src.is_dir():
        pairs = [(src / f, f) for f in ([weight_file(spec, filename).filename] if filename else names)
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

