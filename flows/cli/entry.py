"""The `anomflow` console script: the typer app, without Python's interpreter teardown after it.

Tearing down the interpreter frees every object of the libraries a run imported (Prefect, pydantic, zarr, ...):
about 0.5 s per process on this machine's CPUs, a tenth of a warm run. So this module registers, before anything
else can, an exit handler that runs last: once every other handler has run (Prefect flushing its event and log
queues, logging's shutdown, the store's) and the interpreter has joined its non-daemon threads, it flushes
stdout/stderr and ends the process with the command's exit code. Only a command that ended normally (returned or
called ``sys.exit``) skips the teardown; an uncaught exception takes Python's usual path.
"""
from __future__ import annotations

import atexit
import os
import sys

_exit_code: list[int] = []


def _end_without_teardown() -> None:
    if _exit_code:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(_exit_code[0])


atexit.register(_end_without_teardown)   # registered first, so it runs after every other exit handler


def main() -> None:
    from flows.cli.main import app

    try:
        app()
    except SystemExit as exc:
        code = exc.code
        _exit_code.append(code if isinstance(code, int) else (0 if code is None else 1))
        if not isinstance(code, int) and code is not None:
            print(code, file=sys.stderr)   # sys.exit("message") prints the message
        raise
    _exit_code.append(0)
