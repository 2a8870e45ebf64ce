"""The four pipeline stages, as DVC stages, Prefect tasks and the CLI all call them.

Each takes typed settings and paths and returns paths and small results. Training opens an
MLflow run, records every setting, per-epoch metrics, example strips and checkpoints, and
registers the final checkpoint; the later stages log into the same run, whose id they read
from the training summary.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric

from nectargan_core.export.onnx import ExportResult
from nectargan_core.pipeline.evaluate import EvaluationResult, evaluate_checkpoint
from nectargan_core.pipeline.examples import export_examples
from nectargan_core.pipeline.validate import ValidationResult, validate_dataset
from nectargan_core.settings import Settings
from nectargan_core.tracking.mlflow_run import MLflowCallback, connect, log_settings, run_tags, tracking_uri
from nectargan_core.tracking.registry import RegisteredCheckpoint, download_checkpoint, register_checkpoint
from nectargan_core.training.callbacks import TrainingCallback
from nectargan_core.training.checkpoint import find_checkpoint
from nectargan_core.training.trainer import RunPaths, train


class DatasetInvalid(ValueError):
    """Validation found problems; training must not start."""

    def __init__(self, result: ValidationResult) -> None:
        self.result = result
        super().__init__(f"{result.table()}\nFull report: {result.report_csv}")


@dataclass(frozen=True)
class TrainStageResult:
    run_id: str
    checkpoint: Path | None
    last_epoch: int
    model_version: str | None
    summary: Path


def validate_stage(settings: Settings, report_dir: Path) -> ValidationResult:
    """Validate the dataset; raise ``DatasetInvalid`` (after writing the report) when a rule fails."""
    result = validate_dataset(settings.data, report_dir)
    if not result.ok:
        raise DatasetInvalid(result)
    return result


def _update_summary(path: Path, extra: dict[str, object]) -> None:
    summary = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**summary, **extra}, indent=2) + "\n")
    os.replace(tmp, path)


def fetch_parent(settings: Settings, project_dir: Path) -> RegisteredCheckpoint | None:
    """When continuing from ``models:/...``: resolve the alias to a version once and download its checkpoint."""
    source = settings.train.continue_from
    if not (settings.train.continue_train and source and source.startswith("models:/")):
        return None
    client, _ = connect(settings.tracking, project_dir)
    destination = RunPaths(Path(settings.train.output_dir)).root / "parent"
    shutil.rmtree(destination, ignore_errors=True)
    return download_checkpoint(client, source, destination, settings.train.load_epoch)


def train_stage(
    settings: Settings,
    project_dir: Path,
    callbacks: Sequence[TrainingCallback] = (),
    tags: dict[str, str] | None = None,
    parent: RegisteredCheckpoint | None = None,
) -> TrainStageResult:
    """Train in a new MLflow run and register the final checkpoint.

    ``train.continue_from`` may name a registered model (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``): it is fetched here unless the caller passes it as ``parent``
    (the Prefect flow fetches in a task of its own, with retries). The run records the URI as
    configured and is tagged with the parent version and run.
    """
    client, experiment_id = connect(settings.tracking, project_dir)
    paths = RunPaths(Path(settings.train.output_dir))
    parent = parent or fetch_parent(settings, project_dir)
    run_settings, all_tags = settings, run_tags(settings, project_dir, tags)
    if parent is not None:
        run_settings = settings.model_copy(deep=True)
        run_settings.train.continue_from = str(parent.checkpoint)
        all_tags |= {"parent_model": parent.uri, "parent_model_version": parent.version, "parent_run_id": parent.run_id}

    with mlflow.start_run(
        experiment_id=experiment_id, tags=all_tags, log_system_metrics=settings.tracking.system_metrics
    ) as run:
        run_id = run.info.run_id
        log_settings(client, run_id, settings)
        result = train(run_settings, [*callbacks, MLflowCallback(client, run_id, settings.tracking.log_checkpoints)])
        version = None
        if result.checkpoint is not None and result.last_epoch >= result.start_epoch:
            version = register_checkpoint(client, run_id, result.checkpoint, result.last_epoch, settings, project_dir)
        _update_summary(
            paths.summary,
            {
                "mlflow_run_id": run_id,
                "tracking_uri": tracking_uri(settings.tracking, project_dir),
                "registered_model": settings.tracking.registered_model,
                "model_version": version,
                **{k: v for k, v in all_tags.items() if k.startswith("parent_")},
            },
        )
    return TrainStageResult(run_id, result.checkpoint, result.last_epoch, version, paths.summary)


def _training_run_id(settings: Settings) -> str:
    summary = RunPaths(Path(settings.train.output_dir)).summary
    if not summary.exists():
        raise FileNotFoundError(f"{summary}: no training summary; run the train stage first")
    run_id = json.loads(summary.read_text()).get("mlflow_run_id")
    if not run_id:
        raise ValueError(f"{summary}: has no mlflow_run_id; train with `nectargan train` (the tracked stage)")
    return run_id


def _final_checkpoint(settings: Settings) -> Path:
    return find_checkpoint(RunPaths(Path(settings.train.output_dir)).checkpoints, "latest")


def examples_stage(settings: Settings, project_dir: Path, out_dir: Path) -> list[Path]:
    """Strips of the final checkpoint for the fixed validation samples, logged to the training run."""
    client, _ = connect(settings.tracking, project_dir)
    run_id = _training_run_id(settings)
    paths = export_examples(settings, _final_checkpoint(settings), out_dir, max(settings.train.num_examples, 1))
    for path in paths:
        client.log_artifact(run_id, str(path), "examples/final")
    return paths


def evaluate_stage(
    settings: Settings, project_dir: Path, out_dir: Path, samples: int | None = None
) -> EvaluationResult:
    """Metrics of the final checkpoint on the test split, as DVC metrics and in the training run, and a
    report with the best and worst samples."""
    client, _ = connect(settings.tracking, project_dir)
    run_id = _training_run_id(settings)
    result = evaluate_checkpoint(settings, _final_checkpoint(settings), out_dir, samples=samples)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(f"eval/{name}", value, now, result.epoch) for name, value in result.metrics.items()]
    )
    for path in (result.table, result.metrics_file, result.report):
        client.log_artifact(run_id, str(path), "evaluation")
    if (samples := result.report.parent / "samples").is_dir():
        client.log_artifacts(run_id, str(samples), "evaluation/samples")
    return result


def export_stage(settings: Settings, project_dir: Path, out_path: Path, opset: int = 18) -> ExportResult:
    """The final checkpoint's generator as ONNX, checked against PyTorch, logged to the training run."""
    from nectargan_core.export.onnx import export_and_check

    client, _ = connect(settings.tracking, project_dir)
    run_id = _training_run_id(settings)
    result = export_and_check(settings, _final_checkpoint(settings), out_path, opset)
    client.log_artifact(run_id, str(result.path), "onnx")
    client.log_artifact(run_id, str(result.path.with_suffix(".parity.json")), "onnx")
    return result
