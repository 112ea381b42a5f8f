"""A moto S3 server on 127.0.0.1 in its own process, whose backend can be filled directly (bench_store fig. 6).

Filling an S3 index with 1 M objects over HTTP takes hours; this helper puts them straight into moto's
in-process backend instead, and serves them over HTTP like any other object. Running it in its own process
keeps the server's work off the benchmark's interpreter (one GIL each, as with a real S3).

    python benchmarks/store_moto.py PORT      # prints "ready"; then one JSON command per stdin line:
    {"op": "inject_index", "bucket": B, "prefix": "store/<stage>/<key>/_index", "start": 0, "stop": N,
     "pack": PACK, "rows": R}                 # index entries of items item_id(start..stop-1); prints "done K"
    {"op": "counts"}                          # HTTP requests served since the last "counts", as one JSON line
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections import Counter

_REQUESTS: Counter = Counter()
_LOCK = threading.Lock()


class _CountRequests(logging.Handler):
    """Counts werkzeug's access-log lines by method (LIST: a GET listing) and status, prints nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        message = re.sub(r"\x1b\[[\d;]*m", "", record.getMessage())   # werkzeug colours 4xx/5xx codes
        found = re.search(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d+)', message)
        if found:
            method = "LIST" if found[1] == "GET" and "list-type=" in found[2] else found[1]
            with _LOCK:
                _REQUESTS[f"{method} {found[3]}"] += 1


def item_id(i: int) -> str:
    """The benchmark's item ids: 64 hex digits like the flows' image ids."""
    return hashlib.sha256(f"item-{i}".encode()).hexdigest()


def absent_id(i: int) -> str:
    return hashlib.sha256(f"absent-{i}".encode()).hexdigest()


def _backend():
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def _inject_index(cmd: dict) -> int:
    backend = _backend()
    prefix, pack, rows = cmd["prefix"].rstrip("/"), cmd["pack"], cmd["rows"]
    for i in range(cmd["start"], cmd["stop"]):
        value = json.dumps({"pack": pack, "row": i % rows}).encode()
        backend.put_object(cmd["bucket"], f"{prefix}/{item_id(i)}/_", value, disable_notification=True)
    return cmd["stop"] - cmd["start"]


def main(port: int) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    log = logging.getLogger("werkzeug")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers = [_CountRequests()]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "inject_index":
            print(f"done {_inject_index(cmd)}", flush=True)
        elif cmd["op"] == "counts":
            with _LOCK:
                print(json.dumps(dict(_REQUESTS)), flush=True)
                _REQUESTS.clear()
        elif cmd["op"] == "stop":
            break
    server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
