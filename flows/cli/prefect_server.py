"""Which Prefect API a CLI run talks to, decided before Prefect is imported.

Prefect's ephemeral mode starts an API server inside every process and waits for its health check: about 8 s of
a warm run's start-up on this machine. Instead, ``anomflow run`` uses a local server that outlives it:

* ``PREFECT_API_URL`` set: that server, as Prefect would.
* ``ANOMFLOW_PREFECT_SERVER=auto`` (default): a healthy server of the same Prefect version on
  ``127.0.0.1:$ANOMFLOW_PREFECT_PORT`` (default 4200, Prefect's own) is reused; if none answers, one is started
  with ``prefect server start --background`` (Prefect's PID file in ``$PREFECT_HOME``; ``prefect server stop``
  ends it) and reused by every later run. Its UI shows every run at http://127.0.0.1:4200.
* ``ANOMFLOW_PREFECT_SERVER=ephemeral``: Prefect's per-process server (nothing outlives the run).

Any failure to reach or start a server falls back to the ephemeral mode with a note; a run never fails for it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx

DEFAULT_PORT = 4200
_PROBE_SECONDS = 0.5


def _api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def server_version(api_url: str) -> str | None:
    """The Prefect version of a healthy server at ``api_url``, or None if nothing healthy answers."""
    try:
        health = httpx.get(f"{api_url}/health", timeout=_PROBE_SECONDS)
        if health.status_code != 200 or health.json() is not True:
            return None
        version = httpx.get(f"{api_url}/admin/version", timeout=_PROBE_SECONDS)
        return version.json() if version.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _start_background(port: int, timeout: float) -> str | None:
    """``prefect server start --background`` on 127.0.0.1:port, then wait for health; a failure reason or None."""
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--background", "--host",
           "127.0.0.1", "--port", str(port), "--analytics-off"]
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run {' '.join(cmd)}: {exc}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:   # another run may be starting it at the same moment: either one will do
        if server_version(_api_url(port)) is not None:
            return None
        time.sleep(0.25)
    return f"no healthy Prefect server on 127.0.0.1:{port} after {timeout:.0f} s"


def choose_prefect_api(environ: dict[str, str] | None = None) -> str | None:
    """Set ``PREFECT_API_URL`` in ``environ`` (default ``os.environ``) as described above; returns a note for the
    user when it started a server or fell back to the ephemeral mode, else None. Call before importing Prefect."""
    env = os.environ if environ is None else environ
    mode = env.get("ANOMFLOW_PREFECT_SERVER", "auto")
    if env.get("PREFECT_API_URL") or mode == "ephemeral" or "prefect" in sys.modules:
        return None
    if mode != "auto":
        return f"ANOMFLOW_PREFECT_SERVER={mode!r} is not one of auto, ephemeral: using Prefect's ephemeral server"
    try:
        port = int(env.get("ANOMFLOW_PREFECT_PORT", DEFAULT_PORT))
    except ValueError:
        return f"ANOMFLOW_PREFECT_PORT={env['ANOMFLOW_PREFECT_PORT']!r} is not a port number: using Prefect's " \
               "ephemeral server"
    url, ours = _api_url(port), metadata.version("prefect")
    version, started = server_version(url), None
    if version is None:
        failure = _start_background(port, float(env.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120)))
        if failure:
            return f"{failure}; using Prefect's ephemeral server for this run"
        version = server_version(url)
        started = (f"started a Prefect server in the background for this and later runs: UI at "
                   f"http://127.0.0.1:{port}, `prefect server stop` ends it")
    if version != ours:
        return (f"the Prefect server on 127.0.0.1:{port} runs Prefect {version}, this is {ours}: using Prefect's "
                "ephemeral server for this run (stop that server, or set ANOMFLOW_PREFECT_PORT)")
    env["PREFECT_API_URL"] = url
    return started


def flow_run_settings():
    """The Prefect settings a CLI run's flow runs under: flow-run heartbeats off, unless set explicitly.

    A synchronous flow joins its heartbeat thread when it ends, and that thread sleeps in 1 s steps, so every flow
    run of a CLI command idles up to 1 s (0.5 s on average, an eighth of a warm run) at its end. Heartbeats only
    feed zombie-run automations, which a CLI run that ends in seconds does not need; anomflow's own run records in
    the store carry their liveness anyway. ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (environment or profile) turns
    them back on. Deployments served by ``deployments.production_line`` keep Prefect's default."""
    from contextlib import nullcontext

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
