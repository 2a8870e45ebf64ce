"""Stopping training at a step boundary on SIGTERM or Ctrl+C, and when the launching process dies.

The entry point that owns the process (the ``nectargan`` CLI) calls ``stop_at_step_boundary``;
the trainer calls ``check`` after every step. A first signal asks for the stop, a second one
stops at once. Without the handlers installed (a library caller, a Prefect task) ``check`` is a
no-op and the host's own signal handling applies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def term_when_parent_dies() -> None:
    """Ask the kernel for a SIGTERM when the launching process dies (Linux), so a killed
    ``dvc repro`` does not leave its stage training on, unowned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


@contextmanager
def stop_at_step_boundary(follow_parent: bool = False) -> Iterator[None]:
    """SIGTERM and SIGINT ask the trainer to stop after the current step; ``follow_parent`` also
    turns the death of the parent process into a SIGTERM."""
    parent = os.getppid()
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    if follow_parent:
        term_when_parent_dies()
        if os.getppid() != parent:  # it died before the kernel was asked to watch
            _requested.set()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()
