"""Packs: one batch of items committed as one Zarr v3 group.

A pack holds the items of one batch of one artifact. For each array name, the items' arrays are laid out
in one of three ways (chosen per pack, recorded in the pack record):

- ``stack``: every item has the same shape S -> one array ``n x S`` (item i is row i);
- ``rows``:  same trailing shape T, varying first axis N_i -> one array ``(Σ N_i) x T`` plus CSR
  ``offsets`` (n + 1 ints; item i is rows ``offsets[i]:offsets[i+1]``);
- ``flat``:  anything else -> one 1-D array of the raveled items plus element ``offsets`` and ``shapes``.

The pack record (the group's attributes: ids, per-item JSON meta, layouts and offsets) is the commit
record: it is written after every array, so a pack whose ``zarr.json`` is missing is a partial write.
Encoding happens in memory; writing is one ``set`` per file, all in flight at once and no existence checks
(the pack id is fresh, so nothing can be overwritten), which makes a commit one round trip to the store.
Arrays carry a crc32c checksum after zstd, so ``store verify`` detects corrupt chunks.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.abc.store import Store
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

PACK_FORMAT = 1
CHUNK_BYTES = 32 << 20          # axis-0 chunks of at most this many bytes (bounds memory when reading one item)
_ALLOWED_KINDS = set("biuf")    # bool, signed/unsigned int, float
_KEY_ENCODING = {"name": "v2", "separator": "."}   # a single-chunk array is one file, no chunk folders


@dataclass
class ItemData:
    """One item: named numeric arrays and a JSON-able meta dict."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def check_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"array {name!r} has dtype {arr.dtype}; only bool/int/float go into the store")
    return np.asarray(arr, order="C")   # (ascontiguousarray would turn a 0-d array into 1-d)


def signature(data: ItemData) -> tuple:
    """Items with equal signatures (names, dtypes, ranks) share one pack."""
    return tuple(sorted((n, np.asarray(a).dtype.str, np.asarray(a).ndim) for n, a in data.arrays.items()))


def _layout(arrays: list[np.ndarray]) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Lay out one array name over the pack's items -> (layout, packed array, record fields)."""
    shapes = [a.shape for a in arrays]
    if all(s == shapes[0] for s in shapes):
        return "stack", np.stack(arrays) if arrays else np.zeros((0,)), {}
    if all(a.ndim >= 1 and a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).tolist()
        return "rows", np.concatenate(arrays, axis=0), {"offsets": offsets}
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).tolist()
    return "flat", np.concatenate([a.ravel() for a in arrays]), {"offsets": offsets,
                                                                 "shapes": [list(s) for s in shapes]}


def _chunks(arr: np.ndarray) -> tuple[int, ...]:
    """One chunk unless it exceeds CHUNK_BYTES; then split along axis 0."""
    if arr.ndim == 0:
        return ()
    row_bytes = max(1, arr.nbytes // max(1, arr.shape[0]))
    rows = max(1, min(arr.shape[0], CHUNK_BYTES // row_bytes))
    return (rows, *(max(1, n) for n in arr.shape[1:]))


def encode(ids: list[str], items: list[ItemData], extra: dict[str, Any] | None = None
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Items of one signature -> (packed arrays by name, pack record)."""
    names = sorted(items[0].arrays)
    packed, layouts = {}, {}
    for name in names:
        arrays = [check_array(name, it.arrays[name]) for it in items]
        kind, data, fields = _layout(arrays)
        packed[name] = data
        layouts[name] = {"layout": kind, "dtype": arrays[0].dtype.str, "nbytes": int(data.nbytes), **fields}
    record = {"anomflow_pack": PACK_FORMAT, "items": list(ids), "meta": [it.meta for it in items],
              "arrays": layouts, **(extra or {})}
    json.dumps(record)   # meta must be JSON: fail before anything is written
    return packed, record


async def _encode_files(packed: dict[str, np.ndarray], record: dict[str, Any]) -> dict[str, Any]:
    """Encode a pack into an in-memory Zarr store; returns {relative key: Buffer}, group zarr.json last."""
    mem = MemoryStore()
    await zasync.create_group(store=mem, attributes=record)
    for name, data in packed.items():
        arr = await zasync.create_array(store=mem, name=name, shape=data.shape, dtype=data.dtype,
                                        chunks=_chunks(data) or "auto", chunk_key_encoding=_KEY_ENCODING,
                                        compressors=(ZstdCodec(level=1), Crc32cCodec()), fill_value=0,
                                        config={"write_empty_chunks": True})
        if data.size:
            await arr.setitem(slice(None) if data.ndim else (), data)
    files = dict(mem._store_dict)
    group_json = files.pop("zarr.json")
    return {**files, "zarr.json": group_json}


async def write_pack(store: Store, path: str, packed: dict[str, np.ndarray], record: dict[str, Any]) -> int:
    """Write a pack under ``path``: every array file concurrently, then the group (the commit record).

    Returns the bytes written (compressed)."""
    files = await _encode_files(packed, record)
    group_json = files.pop("zarr.json")
    await asyncio.gather(*(store.set(f"{path}/{key}", buf) for key, buf in files.items()))
    await store.set(f"{path}/zarr.json", group_json)
    return sum(len(b) for b in files.values()) + len(group_json)


async def read_record(store: Store, path: str) -> dict[str, Any] | None:
    """The pack record, or None when the pack has no commit record (partial or absent)."""
    buf = await store.get(f"{path}/zarr.json", prototype=default_buffer_prototype())
    if buf is None:
        return None
    return json.loads(buf.to_bytes())["attributes"]


def _span(layout: dict[str, Any], row: int) -> tuple[int, int]:
    if layout["layout"] == "stack":
        return row, row + 1
    return layout["offsets"][row], layout["offsets"][row + 1]


async def read_rows(store: Store, path: str, record: dict[str, Any], rows: list[int],
                    names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    """The arrays of the given rows (items) of a pack: reads only the chunks that hold them."""
    names = sorted(record["arrays"]) if names is None else names
    if not rows:
        return []
    lo_hi = {n: [_span(record["arrays"][n], r) for r in rows] for n in names}

    async def one(name: str) -> tuple[str, np.ndarray, int]:
        lo, hi = min(s for s, _ in lo_hi[name]), max(e for _, e in lo_hi[name])
        layout = record["arrays"][name]
        arr = await zasync.open_array(store=store, path=f"{path}/{name}", mode="r")
        if arr.ndim == 0 or math.prod(arr.shape) == 0:
            return name, np.asarray(await arr.getitem(...)), 0
        block = await arr.getitem(slice(lo, hi)) if hi > lo else np.zeros((0, *arr.shape[1:]), arr.dtype)
        return name, np.asarray(block, dtype=np.dtype(layout["dtype"])), lo

    blocks = {n: (b, lo) for n, b, lo in await asyncio.gather(*(one(n) for n in names))}
    out = []
    for i, row in enumerate(rows):
        item = {}
        for name in names:
            layout, (block, lo) = record["arrays"][name], blocks[name]
            start, end = lo_hi[name][i]
            if layout["layout"] == "stack":
                item[name] = block[start - lo] if block.ndim else block
            elif layout["layout"] == "rows":
                item[name] = block[start - lo:end - lo]
            else:
                item[name] = block[start - lo:end - lo].reshape(layout["shapes"][row])
        out.append(item)
    return out


def sync(coro):
    """Run a coroutine on zarr's event loop (the one its stores are bound to)."""
    return zarr.core.sync.sync(coro)
