"""Stopping training at a step boundary on SIGTERM or Ctrl+C, and when the launching process dies.

The entry point that owns the process (the ``nectargan`` CLI) calls ``stop_at_step_boundary``;
the trainer calls ``check`` after every step. A first signal asks for the stop, a second one
stops at once. Without the handlers installed (a library caller, a Prefect task) ``check`` is a
no-op and the host's own signal handling applies.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

_requested = threading.Event()
_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


def _handler(signum: int, frame: object) -> None:
    if _requested.is_set():  # asked twice: stop now
        raise KeyboardInterrupt
    _requested.set()
    print(f"{signal.Signals(signum).name}: stopping after this step (again to stop at once)", file=sys.stderr)


def requested() -> bool:
    """Whether a stop was asked for (under torchrun the ranks agree on it at their sync points)."""
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for; call it between steps."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


def _below_launcher() -> tuple[psutil.Process, int]:
    """This process, or the shell between it and its launcher, and the launcher's pid.

    ``dvc repro`` runs a stage as ``$SHELL -c CMD``; bash execs CMD, dash (Debian's /bin/sh)
    does not, so the launcher is the nearest ancestor that is not a shell.
    """
    child = psutil.Process()
    parent = child.parent()
    while parent is not None and parent.name() in _SHELLS and parent.parent() is not None:
        child, parent = parent, parent.parent()
    return child, parent.pid if parent is not None else 0


def term_when_launcher_dies(poll_s: float = 0.5) -> None:
    """Send this process a SIGTERM once its launcher dies, so a killed ``dvc repro`` does not
    leave its stage training on, unowned. The kernel reparents the launcher's child at once
    (before the launcher is reaped), which a polling thread sees."""
    child, launcher = _below_launcher()

    def watch() -> None:
        with suppress(psutil.Error):
            while child.ppid() == launcher:
                time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="term-when-launcher-dies", daemon=True).start()


@contextmanager
def stop_at_step_boundary(
    follow_launcher: bool = False, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[None]:
    """``signals`` ask the trainer to stop after the current step; ``follow_launcher`` also turns the
    death of the launching process (dvc) into a SIGTERM."""
    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    if follow_launcher:
        term_when_launcher_dies()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()
