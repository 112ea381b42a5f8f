"""Checks run before any work starts, so that usage errors exit 2 with one line and no traceback.

``check_outputs``: the locations a run writes (``--store``, ``--out``, ``--save-maps``); nothing is
created (a probe file is written and removed in an existing directory). ``check_inputs``: the dataset
listing (no image opened) and, for SAA+, the expert table. Each failure raises ``UsageError`` with one
line naming the option or path and the reason.

Rules for a local location: it must not be an existing non-directory; if it exists it must be a
writable directory; if it does not, its parent must be an existing writable directory (a missing
parent is usually a typo, so it is refused rather than created). Built-in defaults (the default store
under ``~/.cache``, ablate's ``anomflow-out/ablation``) may create missing parents, as long as the
nearest existing ancestor is a writable directory. ``memory://`` and remote fsspec URLs (``s3://...``)
are not checked here: no network is touched; the store verifies them when it opens.
"""
from __future__ import annotations

import os
import tempfile

LOCAL_SCHEMES = ("file", "local")


class UsageError(ValueError):
    """A command-line value that cannot work; the message is one line naming the path and the reason."""


def local_path(url: str) -> str | None:
    """The filesystem path of a local store URL (plain path, ``file://``, ``local://``), else None."""
    url = str(url)
    if "::" in url:              # fsspec chained URL, e.g. simplecache::s3://...
        return None
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme.lower() not in LOCAL_SCHEMES:
            return None
        url = rest
    return os.path.abspath(os.path.expanduser(url))


def _probe_writable(directory: str) -> str | None:
    """None if files can be created in ``directory``, else the reason; really creates and removes a file."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable (permission denied)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".anomflow-probe-", dir=directory)
    except OSError as exc:
        return f"not writable (creating a file there failed: {exc.strerror or exc})"
    os.close(fd)
    try:
        os.remove(probe)
    except OSError:
        pass
    return None


def _existing_ancestor(path: str) -> str:
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return parent


def check_dir_target(path: str, option: str, create_parents: bool = False) -> None:
    """Raise ``UsageError`` unless ``path`` is, or can become, a writable directory (see module docstring)."""
    label = f"{option} {path}"
    if os.path.lexists(path) and not os.path.exists(path):
        raise UsageError(f"{label}: is a broken symlink")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{label}: is a file, not a directory")
        reason = _probe_writable(path)
        if reason:
            raise UsageError(f"{label}: directory is {reason}")
        return
    parent = os.path.dirname(path)
    if not os.path.exists(parent):
        if not create_parents:
            raise UsageError(f"{label}: parent directory {parent} does not exist")
        parent = _existing_ancestor(path)
    if not os.path.isdir(parent):
        raise UsageError(f"{label}: {parent} is a file, not a directory")
    reason = _probe_writable(parent)
    if reason:
        raise UsageError(f"{label}: cannot be created, {parent} is {reason}")


def check_store(url: str, create_parents: bool = False) -> None:
    """A local store path must be (or can become) a writable directory; other URLs are left to the store."""
    path = local_path(url)
    if path is not None:
        check_dir_target(path, "--store", create_parents)


def check_outputs(store: str, out: str, save_maps: str | None, create_parents: frozenset[str] = frozenset()) -> None:
    """All output locations of one run; paths listed in ``create_parents`` (built-in defaults) may create parents."""
    check_store(store, store in create_parents)
    check_dir_target(os.path.abspath(out), "--out", out in create_parents)
    if save_maps is not None:
        check_dir_target(os.path.abspath(save_maps), "--save-maps", save_maps in create_parents)


def check_inputs(config: object, kind: str, root: str, categories: list[str] | None) -> None:
    """The dataset lists at least one image, categories exist, and an SAA+ expert table / SAM-LAD object area
    table loads."""
    from tasks.datasets import DatasetError, load_dataset
    from tasks.saa_plus.expert import ExpertError
    from tasks.sam_lad.objects import ObjectTableError

    try:
        load_dataset(kind, root, categories)
        if getattr(config, "expert_table", None) is not None:
            from tasks.saa_plus.plan import expert_table

            expert_table(config.expert_table, kind)
        if getattr(config, "object_areas", None) is not None:
            from tasks.sam_lad import objects

            objects.load_table(objects.table_path(config.object_areas, kind, objects.is_synthetic(root)))
    except (DatasetError, ExpertError, ObjectTableError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def open_store(url: str) -> None:
    """Open (or create) the store: a wrong layout, a folder that is not a store, an unreachable bucket."""
    from stores import ArtifactStore, StoreError

    try:
        ArtifactStore(url).index.close()
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--store {url}: cannot open the store ({type(exc).__name__}: {exc})") from None


def check_dask(address: str | None, workers: int | None, resources: list[str] | None,
               store: str) -> tuple[str | None, tuple[tuple[str, float], ...]]:
    """``--dask-address`` / ``--workers`` / ``--dask-resources`` -> (RunContext.dask_address, model_resources).

    The two ways to name a cluster exclude each other; N >= 1; resources are NAME=AMOUNT (repeat, or
    comma-separated) and need a cluster; an in-memory store cannot be shared with worker processes.
    Nothing is connected here (``flows.cli.run_cmd`` connects after the other checks)."""
    from tasks.engine.distributed import parse_address

    if address is not None and workers is not None:
        raise UsageError("--dask-address and --workers exclude each other: use a running cluster or start one")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: needs at least 1 worker")
    dask_address = f"local:{workers}" if workers is not None else address
    if dask_address is not None and workers is None:
        try:
            parse_address(dask_address)
        except ValueError as exc:
            raise UsageError(f"--dask-address {exc}") from None
    parsed: dict[str, float] = {}
    for part in (p.strip() for value in resources or [] for p in value.split(",")):
        name, _, amount = (s.strip() for s in part.partition("="))
        try:
            value = float(amount)
        except ValueError:
            value = 0.0
        if not name or not 0 < value < float("inf"):
            raise UsageError(f"--dask-resources {part!r}: expected NAME=AMOUNT with AMOUNT > 0, e.g. GPU=1")
        parsed[name] = value
    if parsed and dask_address is None:
        raise UsageError("--dask-resources needs a cluster: add --dask-address tcp://HOST:PORT or --workers N")
    if dask_address is not None and str(store).startswith("memory://"):
        raise UsageError(f"--store {store}: Dask workers cannot see an in-memory store; use a shared "
                         "filesystem path or an object store (s3://...)")
    return dask_address, tuple(parsed.items())
