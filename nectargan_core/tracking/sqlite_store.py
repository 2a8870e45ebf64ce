"""The embedded SQLite store shared by many processes at once (trainings, a sweep's children).

SQLite lets one process write at a time. MLflow waits for the write lock (busy_timeout), but a
transaction that read first and then writes is refused at once with "database is locked" when
another process wrote in between; under load that failed a training. Here each call through the
tracker's client is tried again while the store says it is locked (a refused transaction was rolled
back, so a retry does not log twice). The store stays in SQLite's default journal mode: in WAL mode
the runs of `dvc exp run --queue`'s copies did not show in a client opened before them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
LOCKED = "database is locked"
PATIENCE_S = 120.0  # how long a call waits for the others' writes before the error is shown


def patient(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried with a growing, jittered pause while SQLite is locked."""
    deadline, pause = time.monotonic() + PATIENCE_S, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if LOCKED not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 2.0)


class PatientClient:
    """An ``MlflowClient`` whose every call is ``patient``."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: patient(attribute, *args, **kwargs)
