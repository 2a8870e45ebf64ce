"""The temporary Prefect server of `python -m flows`, in a session of its own.

Without PREFECT_API_URL Prefect starts a temporary server itself, in the terminal's process group:
Ctrl+C there reaches the server too, which dies while the flow still reports to it (a ConnectError a
minute later, and a flow that does not exit). This one serves the same API (no UI) in its own
session, so Ctrl+C reaches the flow alone; it is stopped when the flow ends, and gets a SIGTERM
when the flow dies (Linux), so no server is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # loaded before any fork


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process before exec: a SIGTERM once the flow's process is gone."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _drain_prefect() -> None:
    """Prefect sends logs and events from background workers: they reach the server before it stops, or
    Prefect retries them for a minute at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # what was not sent is lost, the flow's own outcome is not
            worker.drain_all(timeout=10)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """The API URL of a temporary server while the block runs; None (no server) when PREFECT_API_URL
    names one, from the environment or the Prefect profile."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    import prefect

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent)]
    args += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "error", "--lifespan", "on"]
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # a server for one flow run: its telemetry only races the flow
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings.to_environment_variables(exclude_unset=True),
    }
    process = subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait = settings.server.ephemeral.startup_timeout_seconds
        deadline = time.monotonic() + wait
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the temporary Prefect server on port {port} exited with code {process.returncode} before it "
                    "answered; its output above says why, or set PREFECT_API_URL to a running server"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the temporary Prefect server on port {port} did not answer within {wait} s: raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL to a running server"
                )
            time.sleep(0.1)
        os.environ["PREFECT_API_URL"] = url
        refresh_global_settings_context()
        try:
            yield url
        finally:
            _drain_prefect()
            os.environ.pop("PREFECT_API_URL", None)
            refresh_global_settings_context()
    finally:
        _stop(process)
