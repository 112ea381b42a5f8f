"""`anomflow models pull`: resumable, verified, atomic downloads where a network exists (the only network code).

Downloads go to ``.partial/<filename>.part`` (resumable with HTTP Range) and are moved into place with
``os.replace`` only after verification, so nothing half-written ever carries a final file name.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import httpx
from tqdm import tqdm

from tasks.models import registry
from tasks.models.registry import WeightFile
from tasks.models.weight_files import (BLOCK, MIRROR_ENV, PARTIAL_DIR, WeightsVerificationError, check, fsync_dir,
                                       model_dir, record, sha256_file, stamp_entry)
from tasks.models.weights import verified_sha256


# -------------------------------------------------------------------------------------------------- pull
def _download(wf: WeightFile, url: str, part: Path, client: httpx.Client, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``part`` (resuming with Range if it exists); return (sha256, size)."""
    offset = part.stat().st_size if part.is_file() else 0
    if wf.size is not None and offset > wf.size:
        part.unlink()
        offset = 0
    if offset and wf.size is not None and offset == wf.size:  # finished earlier, not yet verified
        return sha256_file(part), offset
    # identity encoding: byte offsets (Range, Content-Length) must refer to the file itself
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with client.stream("GET", url, headers=headers, follow_redirects=True) as resp:
        if resp.status_code == 416 and offset:  # stale .part the server cannot continue: start over
            resp.close()
            part.unlink()
            return _download(wf, url, part, client, progress)
        if resp.status_code not in (200, 206) or (resp.status_code == 206 and not offset):
            resp.raise_for_status()
            raise httpx.HTTPStatusError(f"unexpected HTTP {resp.status_code} from {url}",
                                        request=resp.request, response=resp)
        h = hashlib.sha256()
        if resp.status_code == 206:
            content_range = resp.headers.get("content-range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise httpx.RemoteProtocolError(f"server answered Range bytes={offset}- with {content_range!r}")
            with open(part, "rb") as f:
                while block := f.read(BLOCK):
                    h.update(block)
            mode = "ab"
        else:  # 200: the server ignored Range (or there was none) -> restart from zero
            offset, mode = 0, "wb"
        length = resp.headers.get("content-length")
        expected_total = offset + int(length) if length is not None else wf.size
        received = offset
        with open(part, mode) as f, tqdm(total=expected_total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=wf.filename, disable=not progress) as bar:
            for chunk in resp.iter_bytes():  # unbuffered: what arrived is on disk if the connection drops
                f.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if length is not None and received != expected_total:
            raise httpx.RemoteProtocolError(f"incomplete body: got {received} of {expected_total} bytes")
    return h.hexdigest(), received


def pull(name: str, models_dir: str | os.PathLike, mirror: str | None = None, progress: bool = True,
         client: httpx.Client | None = None) -> list[Path]:
    """Download every file of model ``name`` that is not already present and verified.

    ``mirror`` (or ``$ANOMFLOW_MODELS_MIRROR``) replaces everything before the filename in the URLs.
    Returns the final paths of all the spec's files. Raises KeyError (unknown model),
    WeightsVerificationError (bad hash/size; nothing kept) or RuntimeError (network; .part kept to resume)."""
    spec = registry.get_spec(name)
    mirror = mirror if mirror is not None else (os.environ.get(MIRROR_ENV) or None)
    mdir = model_dir(spec, models_dir)
    own_client = client is None
    if own_client:
        client = httpx.Client(timeout=httpx.Timeout(30.0, read=120.0), follow_redirects=True)
    paths: list[Path] = []
    try:
        for wf in spec.files:
            final = mdir / wf.filename
            if final.is_file():
                with contextlib.suppress(WeightsVerificationError):
                    verified_sha256(spec, models_dir, wf.filename)
                    paths.append(final)
                    continue
            url = f"{mirror.rstrip('/')}/{wf.filename}" if mirror else wf.url
            if not url:
                raise RuntimeError(f"model {name!r}: no download URL for {wf.filename!r}; "
                                   f"use `anomflow models import {name} PATH`")
            part = mdir / PARTIAL_DIR / f"{wf.filename}.part"
            part.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha, size = _download(wf, url, part, client, progress)
            except (httpx.HTTPError, OSError) as exc:
                kept = f" ({part.stat().st_size} bytes kept in {part})" if part.is_file() else ""
                raise RuntimeError(
                    f"download of {wf.filename!r} for model {name!r} from {url} failed: {exc}{kept}. "
                    f"It can be resumed by running the same command again: anomflow models pull {name}"
                ) from exc
            entry = stamp_entry(mdir, wf.filename)
            try:
                check(wf, part, size, sha, entry["sha256"] if entry else None)
            except WeightsVerificationError as exc:
                part.unlink(missing_ok=True)
                raise WeightsVerificationError(f"downloaded from {url}: {exc}", path=final,
                                               expected=exc.expected, actual=exc.actual) from None
            os.replace(part, final)
            fsync_dir(mdir)
            record(spec, mdir, wf.filename, sha)
            paths.append(final)
    finally:
        if own_client:
            client.close()
        for d in (mdir / PARTIAL_DIR, mdir):  # leave no empty directories behind (rmdir fails if not empty)
            with contextlib.suppress(OSError):
                d.rmdir()
    return paths
