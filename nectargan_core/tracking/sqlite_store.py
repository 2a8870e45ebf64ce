"""The embedded SQLite store shared by many processes at once (trainings, a sweep's children).

SQLite lets one process write at a time. MLflow waits for the write lock (busy_timeout), but a
transaction that read first and then writes is refused at once with "database is locked" when
another process wrote in between; under load that failed a training. Here each call through the
tracker's client is tried again while the store says it is locked (a refused transaction was rolled
back, so a retry does not log twice). The store stays in SQLite's default journal mode: in WAL mode
the runs of `dvc exp run --queue`'s copies did not show in a client opened before them.

A new store starts as a copy of an empty one whose tables MLflow has already migrated, kept per
MLflow version in the user's cache: migrating a new file costs 2-3 s of CPU in every new project.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow

from nectargan_core.files import atomic_path, write_atomic

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


def seed_new_store(database: Path) -> None:
    """Copy the migrated empty store to ``database`` when it does not exist yet (call it under the
    store's lock). MLflow adds its Default experiment on first open, as it does to a file it migrated
    itself. Without a writable cache MLflow migrates the new file, as it always did."""
    if database.exists() or not database.parent.is_dir():  # MLflow says what is wrong with the path
        return
    try:
        template = _migrated_empty_store()
        write_atomic(database, lambda partial: shutil.copyfile(template, partial))
    except OSError as exc:
        log.debug("no migrated empty MLflow store copied (%s); MLflow migrates %s", exc, database)


def _migrated_empty_store() -> Path:
    """The cached template, made once per MLflow version (whole or not at all: written aside, renamed)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # what MLflow runs on a new database file

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nectargan"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        return template
    with atomic_path(template) as partial:  # an empty file: SQLite takes it as a new database
        engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
    return template
