"""Prefect artifacts are views of a run, never the run: a Prefect server that does not answer (a
restart, the network) costs a view and one warning line, never the training.

Prefect's client retries a call while the server is away (PREFECT_CLIENT_MAX_RETRIES, 5 by default:
waits of 2, 4, 8, 16 and 32 s, about a minute). The progress artifact is sent from a thread of its
own, so training goes on during those waits; the other artifacts are written between tasks.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.settings import get_current_settings

from nectargan_core.training.callbacks import EpochSummary, TrainingCallback

R = TypeVar("R")
_warned: set[str] = set()


def server_away(what: str, exc: BaseException) -> str:
    """The one line for an artifact the server did not take: which server, and what to do."""
    return (
        f"warning: the Prefect server at {get_current_settings().api.url} did not answer "
        f"({type(exc).__name__}: {exc}); the {what} artifact is not updated, the run goes on. Check that the "
        "server runs (`docker compose -f team/compose.yaml ps prefect`); to ride out longer restarts, raise "
        "PREFECT_CLIENT_MAX_RETRIES in the worker's environment"
    )


def best_effort(what: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R | None:
    """``call(*args, **kwargs)``, or None and one warning line (once per artifact and process) when the
    server does not answer within the client's retries."""
    try:
        return call(*args, **kwargs)
    except httpx.HTTPError as exc:  # transport errors, and 5xx answers (PrefectHTTPStatusError)
        if what not in _warned:
            _warned.add(what)
            print(server_away(what, exc), file=sys.stderr, flush=True)
        return None


class ProgressArtifact(TrainingCallback):
    """Training progress as a Prefect progress artifact, sent after each epoch by a thread of its own:
    while the server is away the training goes on, and the newest value is sent once it is back."""

    KEY = "training-progress"

    def __init__(self) -> None:
        self.artifact_id = None
        self.total = 1
        self._latest = self._sent = 0.0
        self._lock = threading.Lock()
        self._sending = False

    def on_train_start(self, start_epoch: int, total_epochs: int, changed: list[str]) -> None:
        self.total = total_epochs
        self._latest = self._sent = 100.0 * (start_epoch - 1) / total_epochs
        self.artifact_id = best_effort(
            self.KEY, create_progress_artifact, progress=self._latest, key=self.KEY, description="epochs done"
        )

    def on_epoch_end(self, summary: EpochSummary) -> None:
        with self._lock:
            self._latest = 100.0 * summary.epoch / self.total
            if self.artifact_id is None or self._sending:
                return  # the sender in flight sends the newest value when it is done
            self._sending = True
        context = contextvars.copy_context()  # the flow run's client, which retries while the server is away
        threading.Thread(target=context.run, args=(self._send,), name="progress-artifact", daemon=True).start()

    def _send(self) -> None:
        value = None
        while True:
            with self._lock:
                if value is not None:
                    self._sent = value
                if self._sent == self._latest:
                    self._sending = False
                    return
                value = self._latest
            if best_effort(self.KEY, update_progress_artifact, self.artifact_id, progress=value) is None:
                with self._lock:
                    self._sending = False  # the next epoch tries again
                return
