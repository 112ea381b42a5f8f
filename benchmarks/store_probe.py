"""Count the store round trips of one in-process ``anomflow run`` (figure 3 of bench_store.py).

    python benchmarks/store_probe.py DEST.json run saa --dataset mvtec --root ... (any CLI arguments)

Counts (a) every call of ``zarr.core.sync.sync`` (each pack read or write is one, through
``stores.packs.sync``; patched before the flows are imported, also where a module bound it by name) and
(b) every outermost call of a public index method (SqliteIndex and ObjectIndex), by method and thread.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zarr.core.sync as zsync  # noqa: E402

from stores import packs  # noqa: E402
from stores.index import Index  # noqa: E402
from stores.sqlite_index import SqliteIndex  # noqa: E402
from stores.object_index import ObjectIndex  # noqa: E402

COUNTS: Counter = Counter()
CALLERS: Counter = Counter()   # (what, first caller outside stores/) -> calls
_ORIG_SYNC = zsync.sync
_ORIG_PACKS_SYNC = packs.sync
_DEPTH = threading.local()


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/stores/" not in frame.filename and "store_probe" not in frame.filename:
            return f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "?"


def _zarr_sync(*args, **kwargs):
    COUNTS["zarr_sync"] += 1
    CALLERS[("zarr_sync", _caller())] += 1
    return _ORIG_SYNC(*args, **kwargs)


def _packs_sync(coro):
    COUNTS["zarr_sync_via_packs"] += 1
    return _ORIG_PACKS_SYNC(coro)


def _patch_sync() -> None:
    """Replace zarr's sync wherever a loaded module holds it (``from zarr.core.sync import sync``)."""
    for module in list(sys.modules.values()):
        if getattr(module, "sync", None) is _ORIG_SYNC:
            module.sync = _zarr_sync


def _counted(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = getattr(_DEPTH, "n", 0)
        if depth == 0:   # count outermost calls only (ObjectIndex methods call each other)
            where = "heartbeat" if threading.current_thread().name.startswith("heartbeat") else "flow"
            COUNTS[f"index.{name}"] += 1
            COUNTS[f"index_{where}"] += 1
            CALLERS[(f"index.{name}", _caller())] += 1
        _DEPTH.n = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH.n = depth
    return wrapper


def _patch_index() -> None:
    public = [n for n, v in vars(Index).items() if callable(v) and not n.startswith("_")]
    for cls in (SqliteIndex, ObjectIndex):
        for name in public:
            setattr(cls, name, _counted(name, getattr(cls, name)))


def main(dest: str, argv: list[str]) -> None:
    zsync.sync = _zarr_sync
    packs.sync = _packs_sync
    _patch_index()
    from typer.testing import CliRunner

    from flows.cli.main import app
    import flows.methods  # noqa: F401 - load every flow module before patching names
    _patch_sync()
    start = time.perf_counter()
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    wall = time.perf_counter() - start
    index = {k[6:]: v for k, v in sorted(COUNTS.items()) if k.startswith("index.")}
    out = {"exit_code": result.exit_code, "wall_s": wall, "zarr_sync": COUNTS["zarr_sync"],
           "zarr_sync_via_packs": COUNTS["zarr_sync_via_packs"], "index_calls": sum(index.values()),
           "index_calls_flow": COUNTS["index_flow"], "index_calls_heartbeat": COUNTS["index_heartbeat"],
           "index_by_method": index,
           "callers": [f"{n:5d} {what} <- {where}" for (what, where), n in CALLERS.most_common(25)],
           "output_tail": result.output[-2000:]}
    Path(dest).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
