"""MLflow tracking: where the store is, what a run records, and the callback that records it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from nectargan_core.settings import Settings, TrackingSettings, flatten_dotted
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback


class TrackingUnavailable(RuntimeError):
    """The configured tracking server does not answer."""


def tracking_uri(cfg: TrackingSettings, project_dir: Path) -> str:
    """The configured URI, or the embedded default: an SQLite file in the project, by absolute path."""
    return cfg.uri or f"sqlite:///{(project_dir / 'mlflow.db').resolve()}"


def connect(cfg: TrackingSettings, project_dir: Path) -> tuple[MlflowClient, str]:
    """Point MLflow at the store (failing fast when a server is down); returns (client, experiment id)."""
    uri = tracking_uri(cfg, project_dir)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(
                f"tracking.uri {uri}: no MLflow server answers ({exc}). Start it (mlflow server --host 127.0.0.1 "
                "--port 5000 ...) or set tracking.uri: null to use the local SQLite store."
            ) from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    return client, client.create_experiment(cfg.experiment, artifact_location=_artifact_location(uri))


def _artifact_location(uri: str) -> str | None:
    """Beside an SQLite store: its folder's mlruns/ (MLflow's default would follow the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    return None  # a server decides


def settings_params(settings: Settings) -> dict[str, str]:
    """Every setting under its dotted params.yaml name, as MLflow param strings."""
    flat = flatten_dotted(settings.model_dump(mode="json"))
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}


def params_hash(settings: Settings) -> str:
    return hashlib.sha256(json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def git_commit(project_dir: Path) -> str:
    """HEAD of the project's git repo, with '-dirty' when tracked files are modified; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def file_md5(path: Path) -> str:
    """MD5 of the file's bytes: what DVC records as the hash of a file output."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_tags(settings: Settings, project_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """One id across tools: git commit, params hash, DVC experiment name (and the caller's, e.g. Prefect)."""
    tags = {"git_commit": git_commit(project_dir), "params_hash": params_hash(settings)}
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = exp
    return {**tags, **(extra or {})}


def log_settings(client: MlflowClient, run_id: str, settings: Settings) -> None:
    params = [Param(key, value) for key, value in settings_params(settings).items()]
    for start in range(0, len(params), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[start : start + 100])


class MLflowCallback(TrainingCallback):
    """Per epoch (step = epoch): each loss unweighted and weighted, each weight, LRs, time, images/s;
    example strips as step images; checkpoints as artifacts."""

    def __init__(self, client: MlflowClient, run_id: str, log_checkpoints: bool) -> None:
        self.client = client
        self.run_id = run_id
        self.log_checkpoints = log_checkpoints

    def on_epoch_end(self, summary: EpochSummary) -> None:
        values = {
            "loss/d": summary.loss_d,
            "loss/g": summary.loss_g,
            "lr/g": summary.lr_g,
            "lr/d": summary.lr_d,
            "epoch_seconds": summary.seconds,
            "images_per_s": summary.images_per_s,
        }
        for name, weight in summary.weights.items():
            values[f"weight/{name}"] = weight
        for name, value in summary.losses.items():
            values[f"loss/{name}"] = value
            values[f"loss/{name}_weighted"] = value * summary.weights[name]
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, summary.epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_examples(self, epoch: int, paths: list[Path]) -> None:
        for index, path in enumerate(paths):
            with Image.open(path) as image:
                self.client.log_image(self.run_id, image.copy(), key=f"examples/sample_{index:02d}", step=epoch)

    def on_checkpoint(self, epoch: int, path: Path) -> None:
        if self.log_checkpoints:
            self.client.log_artifact(self.run_id, str(path), "checkpoints")
