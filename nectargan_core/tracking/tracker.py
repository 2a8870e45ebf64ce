"""MLflow tracking: one ``Tracker`` per process, opened at the face (a CLI command or the flow) and
passed down, so the store is connected once and every artifact and metric name is spelled here.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException

from nectargan_core.files import held_lock
from nectargan_core.layout import parity_path
from nectargan_core.settings import Settings, TrackingSettings, flatten_dotted, refuse_credentials
from nectargan_core.tracking.provenance import file_md5
from nectargan_core.tracking.sqlite_store import LOCKED, PatientClient, patient, seed_new_store

if TYPE_CHECKING:
    from nectargan_core.inference.evaluate import EvaluationResult
    from nectargan_core.inference.onnx import ExportResult

# Artifact folders of a training run (and the registered model's source).
MODEL_ARTIFACT = "model"  # the registered pyfunc; its artifact is the final full state
SNAPSHOTS_ARTIFACT = "snapshots"  # every snapshot, with log_checkpoints: all
FINAL_EXAMPLES_ARTIFACT = "examples/final"
EVALUATION_ARTIFACT = "evaluation"
ONNX_ARTIFACT = "onnx"
# Every run logs its comparison images under the same names at the top of its artifacts: MLflow's
# Compare page (3.17) lists only the top-level files the runs share, never a folder's contents. A
# sweep's parent run holds its report, curves and grid under SWEEP_ARTIFACT.
FINAL_STRIPS_NAME = "final_strips.png"
VAL_CURVES_NAME = "val_curves.png"
SWEEP_ARTIFACT = "sweep"
EVAL_METRIC_PREFIX = "eval/"


def example_image_key(sample: int) -> str:
    """MLflow image key of one fixed example sample (its step is the epoch)."""
    return f"examples/sample_{sample:02d}"


TRACKING_URI_ENV = "NECTARGAN_TRACKING_URI"  # not MLflow's own: set_tracking_uri writes that one


class TrackingUnavailable(RuntimeError):
    """The configured tracking server does not answer."""


# MLflow's client retries a failed request for minutes by default (7 retries, backoff factor 2): a
# training would stand still that long at every call. With a journal to fall back on, an outage
# costs a few seconds per epoch. Set in the environment, these are the user's to change.
OUTAGE_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_retries() -> None:
    """Short MLflow HTTP retries for this process, unless the environment sets them."""
    for name, value in OUTAGE_BOUNDS.items():
        os.environ.setdefault(name, value)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server did not answer (or answered 5xx after the retries)."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        return ("API request to" in text and "failed with exception" in text) or exc.error_code in (
            "TEMPORARILY_UNAVAILABLE",
            "SERVICE_UNDER_MAINTENANCE",
        )
    return False


def server_error(exc: BaseException) -> str:
    """What the server answered, short: ``HTTP 503`` after MLflow's retries, else the error's first line."""
    found = re.search(r"too many (\d{3}) error responses", str(exc))
    if found:
        return f"HTTP {found.group(1)}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def original_project(project_dir: Path) -> Path:
    """The project itself, also from the temporary copy a queued DVC experiment runs in
    (``PROJECT/.dvc/tmp/exps/tmpXXXX``): its runs belong in the project's store, not the copy's."""
    parts = project_dir.resolve().parts
    for index in range(len(parts) - 3):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return project_dir.resolve()


def tracking_uri(cfg: TrackingSettings, project_dir: Path) -> str:
    """The configured URI, else $NECTARGAN_TRACKING_URI (how a team's workers find their server),
    else the embedded default: an SQLite file in the project, by absolute path."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get(TRACKING_URI_ENV):
        try:
            refuse_credentials(os.environ[TRACKING_URI_ENV], TRACKING_URI_ENV)
        except ValueError as exc:
            raise TrackingUnavailable(str(exc)) from None
        return os.environ[TRACKING_URI_ENV]
    return f"sqlite:///{original_project(project_dir) / 'mlflow.db'}"


def embedded(uri: str) -> bool:
    """Whether the store is the project's own SQLite file (its artifacts beside it, on this disk)."""
    return uri.startswith("sqlite:///")


def _artifact_location(uri: str) -> str | None:
    """Beside an SQLite store: its folder's mlruns/ (MLflow's default would follow the working directory)."""
    if embedded(uri):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    return None  # a server decides


def _sqlite_lock(uri: str) -> AbstractContextManager[None]:
    if not embedded(uri):
        return nullcontext()
    database = Path(uri.removeprefix("sqlite:///"))
    return held_lock(database.with_name(database.name + ".lock"), f"the MLflow store {database}", wait=True)


def settings_params(settings: Settings) -> dict[str, str]:
    """Every setting under its dotted params.yaml name, as MLflow param strings."""
    flat = flatten_dotted(settings.model_dump(mode="json"))
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}


@dataclass(frozen=True)
class Tracker:
    """A connected MLflow store and the experiment that holds the runs."""

    client: MlflowClient
    uri: str
    experiment: str
    experiment_id: str

    @classmethod
    def connect(cls, cfg: TrackingSettings, project_dir: Path) -> Tracker:
        """Point MLflow at the store (failing fast when a server is down); creates the experiment if needed."""
        uri = tracking_uri(cfg, project_dir)
        if uri.startswith(("http://", "https://")):
            bound_retries()
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                    pass
            except (urllib.error.URLError, OSError) as exc:
                raise TrackingUnavailable(
                    f"tracking.uri {uri}: no MLflow server answers ({exc}). Start it (mlflow server --host "
                    "127.0.0.1 --port 5000 ...) or set tracking.uri: null to use the local SQLite store."
                ) from None
        if embedded(uri) and (database := Path(uri.removeprefix("sqlite:///"))).is_dir():  # MLflow retries ~100 s
            raise TrackingUnavailable(
                f"tracking store {uri}: {database} is a folder, not an SQLite file; point tracking.uri at a file"
            )
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        # A new SQLite store is created (a migrated empty copy, else its tables migrated by the tracking
        # store and the registry store each) on first use: one process at a time, inside the lock.
        try:
            with _sqlite_lock(uri):
                if embedded(uri):
                    seed_new_store(Path(uri.removeprefix("sqlite:///")))
                client = MlflowClient(uri, uri)
                found = client.get_experiment_by_name(cfg.experiment)
                client.search_registered_models(max_results=1)
                if embedded(uri):  # many processes at once: see sqlite_store
                    client = PatientClient(client)
                if found is not None:
                    experiment_id = found.experiment_id
                else:
                    location = _artifact_location(uri)
                    experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
        except Exception as exc:
            if not type(exc).__module__.startswith(("mlflow", "sqlalchemy", "alembic")):
                raise
            if not embedded(uri) and unreachable(exc):  # /health answered: the server is up, its store is not
                raise TrackingUnavailable(
                    f"tracking.uri {uri}: the MLflow server answers but its store does not ({server_error(exc)}): "
                    "its database (PostgreSQL) is probably away or restarting; try again when it is back"
                ) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingUnavailable(
                f"tracking store {uri}: {first}; if it is the embedded SQLite file, move it aside (the runs in it "
                "are then not visible) or point tracking.uri at a working store"
            ) from None
        return cls(client, uri, cfg.experiment, experiment_id)

    # ------------------------------------------------------------ training runs

    @contextmanager
    def start_run(
        self,
        tags: dict[str, str],
        system_metrics: bool,
        run_id: str | None = None,
        away: Callable[[str, str], None] | None = None,
    ) -> Iterator[str]:
        """A new run of the experiment, or ``run_id`` reopened; yields its id. It ends FINISHED, FAILED
        when the block raises, or KILLED when it is interrupted (Ctrl+C, SIGTERM). When the server does
        not answer at the end, ``away(run_id, status)`` (if given) keeps the ending for later."""
        run = patient(
            mlflow.start_run,
            run_id=run_id,
            experiment_id=None if run_id else self.experiment_id,
            tags=tags,
            log_system_metrics=system_metrics,
        )
        status = "FINISHED"
        try:
            yield run.info.run_id
        except BaseException as exc:
            status = "FAILED" if isinstance(exc, Exception) else "KILLED"  # Ctrl+C, SIGTERM, a host's signal
            raise
        finally:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.info.run_id:
                try:
                    self._end_run(run.info.run_id, status)
                except Exception as exc:
                    if away is None or not unreachable(exc):
                        raise
                    away(run.info.run_id, status)

    def _end_run(self, run_id: str, status: str) -> None:
        """Leave the run's context, then mark it ended (mlflow.end_run does both, in that order)."""
        try:
            mlflow.end_run(status)
        except Exception as exc:
            if LOCKED not in str(exc):
                raise
            self.client.set_terminated(run_id, status)  # the context is left: the patient client ends it

    def run(self, run_id: str) -> Run | None:
        """The run of this experiment with ``run_id``, or None (deleted, elsewhere, or unknown)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        active = run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id
        return run if active else None

    def newest_run(self, filter_string: str) -> str | None:
        """The id of the newest run of this experiment that matches an MLflow filter, or None."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0].info.run_id if runs else None

    # ------------------------------------------------------------ the stages after training

    def log_final_examples(self, run_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), FINAL_EXAMPLES_ARTIFACT)

    def log_evaluation(self, run_id: str, result: EvaluationResult, samples: Path) -> None:
        """The means as ``eval/*`` metrics (step = the evaluated epoch), the table, report and strips."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{EVAL_METRIC_PREFIX}{name}", value, now, result.epoch) for name, value in result.metrics.items()
        ]
        self.client.log_batch(run_id, metrics=metrics)
        for path in (result.table, result.metrics_file, result.report):
            self.client.log_artifact(run_id, str(path), EVALUATION_ARTIFACT)
        if samples.is_dir():  # the report links the strips by this folder's name
            self.client.log_artifacts(run_id, str(samples), f"{EVALUATION_ARTIFACT}/{samples.name}")

    def logged_models(self, experiment_id: str, run_id: str | None = None) -> list:
        """Every logged model of the experiment (page by page), or those one run produced."""
        models, token = [], None
        while True:
            page = self.client.search_logged_models(experiment_ids=[experiment_id], page_token=token)
            models += [m for m in page if run_id is None or m.source_run_id == run_id]
            token = page.token
            if not token:
                return models

    def forget_runs(self, run_ids: list[str]) -> list[str]:
        """Delete runs with their registered versions and logged models (MLflow's soft delete: ``mlflow gc``
        then frees the bytes). Returns what was deleted, one line each."""
        done = []
        for run_id in run_ids:
            run = self.client.get_run(run_id)  # an unknown id fails here, before anything is deleted
            for version in self.client.search_model_versions(f"run_id='{run_id}'"):
                self.client.delete_model_version(version.name, version.version)
                done.append(f"registered {version.name} version {version.version}")
            for model in self.logged_models(run.info.experiment_id, run_id):
                self.client.delete_logged_model(model.model_id)
                done.append(f"logged model {model.model_id}")
            self.client.delete_run(run_id)
            done.append(f"run {run_id}")
        return done

    def log_onnx(self, run_id: str, result: ExportResult) -> None:
        """The parity report, and where the ONNX file is with its MD5: the file itself is a DVC output
        (a second copy in MLflow would cost as much as the generator again)."""
        self.client.log_artifact(run_id, str(parity_path(result.path)), ONNX_ARTIFACT)
        self.client.set_tag(run_id, "onnx_path", str(result.path))
        self.client.set_tag(run_id, "onnx_md5", file_md5(result.path))
