"""What each MLflow run of the experiment stores, as plain rows for the disk report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mlflow

from nectargan_core.reports.disk import DiskRow
from nectargan_core.tracking.tracker import Tracker, embedded


def _artifact_bytes(list_artifacts: Callable[..., Iterable[Any]], uri: str) -> tuple[int, int]:
    """(files, bytes) under an artifact URI, through the MLflow artifact API (any store)."""
    files = size = 0
    for info in list_artifacts(artifact_uri=uri):
        if info.is_dir:
            sub_files, sub_size = _artifact_bytes(list_artifacts, f"{uri.rstrip('/')}/{Path(info.path).name}")
            files, size = files + sub_files, size + sub_size
        else:
            files, size = files + 1, size + (info.file_size or 0)
    return files, size


def mlflow_rows(tracker: Tracker) -> list[DiskRow]:
    """One row per run of the experiment: its artifacts plus the logged models it produced."""
    rows = []
    models = tracker.logged_models(tracker.experiment_id)
    for run in tracker.client.search_runs([tracker.experiment_id], max_results=10_000):
        files, size = _artifact_bytes(mlflow.artifacts.list_artifacts, run.info.artifact_uri)
        for model in (m for m in models if m.source_run_id == run.info.run_id):
            model_files, model_size = _artifact_bytes(mlflow.artifacts.list_artifacts, model.artifact_location)
            files, size = files + model_files, size + model_size
        rows.append(DiskRow(f"MLflow run {run.info.run_name or ''}".rstrip(), run.info.run_id, files, size))
    return rows


def local_store(tracker: Tracker) -> Path | None:
    """The embedded store's artifact folder (``mlruns/`` beside its SQLite file), whose files are on
    this disk; None for a server, or before anything was logged."""
    if not embedded(tracker.uri):
        return None
    mlruns = Path(tracker.uri.removeprefix("sqlite:///")).parent / "mlruns"
    return mlruns if mlruns.is_dir() else None
