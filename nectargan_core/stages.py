"""The pipeline's stages, as DVC stages (through the CLI), Prefect tasks and the CLI all call them.

Each takes typed settings, the process's ``Tracker`` and paths, and returns paths and small
results. Training opens an MLflow run, records every setting, per-epoch metrics, example strips
and checkpoints, and registers the final checkpoint; the later stages log into the same run,
whose id they read from the training summary. Output folders default to the settings' layout.

Each stage imports the engine it runs inside its function, so that a DVC stage loads (and
depends on) only its own code: a change to evaluation never makes training stale.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nectargan_core.checkpoint import find_checkpoint
from nectargan_core.layout import EvaluationPaths, RunPaths, onnx_path
from nectargan_core.settings import Settings, divergence_changes

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nectargan_core.data.validate import ValidationResult
    from nectargan_core.distributed import World
    from nectargan_core.inference.evaluate import EvaluationResult
    from nectargan_core.inference.onnx import ExportResult
    from nectargan_core.inference.predict import PredictSummary
    from nectargan_core.tracking.registry import RegisteredCheckpoint
    from nectargan_core.tracking.tracker import Tracker
    from nectargan_core.training.callbacks import EpochSummary, TrainingCallback


class TrainingDiverged(ValueError):
    """Training ended with losses beyond ``train.diverged_above``: kept, but not registered."""


class DatasetInvalid(ValueError):
    """Validation found problems; training must not start."""

    def __init__(self, result: ValidationResult) -> None:
        self.result = result
        where = f"Full report: {result.report_csv}" if result.report_csv else "Run `nectargan validate` for the report."
        super().__init__(f"{result.table()}\n{where}")


@dataclass(frozen=True)
class TrainStageResult:
    run_id: str
    checkpoint: Path | None
    last_epoch: int
    model_version: str | None
    summary: Path


def validate_stage(settings: Settings, report_dir: Path | None = None) -> ValidationResult:
    """Validate the dataset; raise ``DatasetInvalid`` (after writing the report) when a rule fails."""
    from nectargan_core.data.validate import validate_dataset

    result = validate_dataset(settings.data, report_dir or Path(settings.outputs.validation))
    if not result.ok:
        raise DatasetInvalid(result)
    return result


def ensure_validated(settings: Settings) -> None:
    """Training starts only on a dataset that passes validation: a fresh passing report for this very
    dataset and rules is enough (the validate stage wrote it), otherwise every rule runs again here
    (in memory: the validate stage's report stays its own). Raises ``DatasetInvalid`` before any output
    is touched."""
    from nectargan_core.data.validate import passed_before, validate_dataset

    if passed_before(settings.data, Path(settings.outputs.validation)):
        return
    result = validate_dataset(settings.data, None)
    if not result.ok:
        raise DatasetInvalid(result)


def fetch_parent(settings: Settings, tracker: Tracker) -> RegisteredCheckpoint | None:
    """When continuing from ``models:/...``: resolve the alias to a version once and download its checkpoint."""
    from nectargan_core.tracking.registry import download_checkpoint

    source = settings.train.continue_from
    if not (settings.train.continue_train and source and source.startswith("models:/")):
        return None
    destination = RunPaths.of(settings).parent
    shutil.rmtree(destination, ignore_errors=True)
    return download_checkpoint(tracker, source, destination, settings.train.load_epoch)


def train_stage(
    settings: Settings,
    tracker: Tracker | None,
    project_dir: Path,
    callbacks: Sequence[TrainingCallback] = (),
    tags: dict[str, str] | None = None,
    parent: RegisteredCheckpoint | None = None,
    register: bool = True,
    world: World | None = None,
) -> TrainStageResult:
    """Train in an MLflow run and register the final checkpoint.

    ``train.continue_from`` may name a registered model (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``): it is fetched here unless the caller passes it as ``parent``
    (the Prefect flow fetches in a task of its own, with retries). Which MLflow run the training
    belongs to (new, a killed one reopened, or one already finished) is ``tracking.runs``' call.
    ``register=False`` (a sweep's children) trains and tracks without registering.

    Under torchrun every process calls this inside the process group: rank 0 does all of the
    above, the others only train (``tracker`` is None there: they never touch the tracking store).
    """
    from nectargan_core.distributed import SINGLE, main_decides
    from nectargan_core.tracking.runs import plan_training, training_run
    from nectargan_core.training import interrupt
    from nectargan_core.training.resume import refuse_nothing_to_continue
    from nectargan_core.training.summary import RunSummary, registered_versions
    from nectargan_core.training.trainer import train

    paths, world = RunPaths.of(settings), world or SINGLE
    if not world.is_main:  # rank 0 says whether there is training to do
        last = train(settings, world=world).last_epoch if main_decides(None, world) else settings.train.total_epochs
        return TrainStageResult("", None, last, None, paths.summary)
    if tracker is None:
        raise ValueError("rank 0 trains in a tracking run: pass the tracker")

    ensure_validated(settings)
    refuse_nothing_to_continue(settings, paths, paths.lock.exists())  # before a tracking run is opened
    plan = plan_training(tracker, settings, project_dir, parent or fetch_parent(settings, tracker), tags)
    if not main_decides(plan.finished is None, world):
        done = plan.finished
        return TrainStageResult(done.run_id, paths.latest, done.epoch, done.version, paths.summary)

    registered = registered_versions(paths.summary)  # read before training rewrites the summary
    with training_run(tracker, plan) as run:
        result = train(plan.trains, [*callbacks, run.recorder(settings)], {"mlflow_run_id": run.run_id}, world)
        interrupt.check()  # a stop asked for after the last step: the run is KILLED, the continue finishes it
        summary = RunSummary.read(paths.summary).with_changes(mlflow_run_id=run.run_id, tracking_uri=tracker.uri)
        if diverged := (_divergence(settings, result.history[-1]) if result.history else None):
            run.refuse_registration(diverged)
            summary.with_changes(not_registered=diverged).write(paths.summary)
            raise TrainingDiverged(
                f"{diverged}; the run is kept in {paths.root} (MLflow run {run.run_id}) but not registered, and "
                f"{settings.tracking.registered_model}@{settings.tracking.alias} did not move. Lower the learning "
                "rates or the loss weights (or raise train.diverged_above) and train again."
                + divergence_changes(settings)
            )
        version = None
        if not result.history:  # nothing trained: the run may have registered this epoch before a kill
            version = registered.get(result.last_epoch) or run.registered_version(settings, result.last_epoch)
        if result.checkpoint is not None and version is None and register:
            selected = paths.best if settings.train.select_by and paths.best.exists() else None
            version = run.register(result.checkpoint, settings, project_dir, selected)
        with tempfile.TemporaryDirectory(prefix="nectargan-compare-") as folder:
            run.log_compare_images(_compare_images(paths, Path(folder)))
        summary.with_changes(
            registered_model=settings.tracking.registered_model,
            model_version=version,
            registered_epoch=result.last_epoch if version else None,
            **plan.parent_tags,
        ).write(paths.summary)
    return TrainStageResult(run.run_id, result.checkpoint, result.last_epoch, version, paths.summary)


def _compare_images(paths: RunPaths, folder: Path) -> list[Path]:
    """The run's val curves and final strips under the names every run uses."""
    from nectargan_core.reports.studies import final_strips, val_curves
    from nectargan_core.tracking.tracker import FINAL_STRIPS_NAME, VAL_CURVES_NAME

    files = [val_curves({paths.root.name: paths.epochs}, folder / VAL_CURVES_NAME)] if paths.epochs.exists() else []
    if (strips := final_strips(paths.examples, folder / FINAL_STRIPS_NAME)) is not None:
        files.append(strips)
    return files


def _divergence(settings: Settings, last: EpochSummary) -> str | None:
    """Why the final epoch's losses say training diverged, or None."""
    bound = settings.train.diverged_above
    losses = {"G": last.loss_g, "D": last.loss_d}
    over = {name: value for name, value in losses.items() if bound is not None and value > bound}
    if not over:
        return None
    shown = ", ".join(f"{name} {value:.3g}" for name, value in over.items())
    return (
        f"training diverged: the mean losses of epoch {last.epoch} ({shown}) are above train.diverged_above ({bound:g})"
    )


def _training_run_id(settings: Settings) -> str:
    from nectargan_core.training.summary import RunSummary

    path = RunPaths.of(settings).summary
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training summary; run the train stage first")
    summary = RunSummary.read(path)
    if summary is None or not summary.mlflow_run_id:
        raise ValueError(f"{path}: has no mlflow_run_id; train with `nectargan train` (the tracked stage)")
    return summary.mlflow_run_id


def _final_checkpoint(settings: Settings) -> Path:
    """What examples, evaluation and export use: the best validated epoch's generator with
    train.select_by, else the run's final full state."""
    paths = RunPaths.of(settings)
    if settings.train.select_by and paths.best.exists():
        return paths.best
    return find_checkpoint(paths.root, "latest")


def examples_stage(settings: Settings, tracker: Tracker, out_dir: Path | None = None) -> list[Path]:
    """Strips of the final checkpoint for the fixed validation samples, logged to the training run."""
    from nectargan_core.inference.examples import export_examples

    run_id = _training_run_id(settings)
    out_dir = out_dir or Path(settings.outputs.examples)
    paths = export_examples(settings, _final_checkpoint(settings), out_dir, max(settings.train.num_examples, 1))
    tracker.log_final_examples(run_id, paths)
    return paths


def evaluate_stage(
    settings: Settings, tracker: Tracker, out_dir: Path | None = None, samples: int | None = None
) -> EvaluationResult:
    """Metrics of the final checkpoint on the test split, as DVC metrics and in the training run, and a
    report with the best and worst samples."""
    from nectargan_core.inference.evaluate import evaluate_checkpoint

    run_id = _training_run_id(settings)
    out_dir = out_dir or Path(settings.outputs.eval)
    result = evaluate_checkpoint(settings, _final_checkpoint(settings), out_dir, samples=samples)
    tracker.log_evaluation(run_id, result, EvaluationPaths(out_dir).samples)
    return result


def export_stage(settings: Settings, tracker: Tracker, out_path: Path | None = None, opset: int = 18) -> ExportResult:
    """The final checkpoint's generator as ONNX, checked against PyTorch, logged to the training run."""
    from nectargan_core.inference.onnx import export_and_check

    run_id = _training_run_id(settings)
    result = export_and_check(settings, _final_checkpoint(settings), out_path or onnx_path(settings), opset)
    tracker.log_onnx(run_id, result)
    return result


def predict_stage(
    settings: Settings,
    source: str,
    input_dir: Path,
    out_dir: Path | None = None,
    mode: Literal["resize", "pad"] = "resize",
    tracker: Tracker | None = None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    strict: bool = False,
    pairs: Literal["auto", "a", "b", "whole"] = "auto",
) -> PredictSummary:
    """Run a checkpoint or snapshot file, an ONNX file or a registered model (``models:/...``, through
    its MLflow pyfunc; needs ``tracker``) over a folder of images, streamed (see ``predict_folder``;
    ``data.direction`` says which half of a pair-shaped input is the model's input)."""
    from nectargan_core.device import resolve_device
    from nectargan_core.inference.predict import load_runner, predict_folder, pyfunc_runner

    out_dir = out_dir or Path(settings.outputs.predict)
    if source.startswith("models:/"):
        from nectargan_core.tracking.registry import load_registered_model  # MLflow: only for a registered model

        if tracker is None:
            raise ValueError(f"{source}: a registered model needs the tracking store (pass a Tracker)")
        runner = pyfunc_runner(*load_registered_model(tracker, source))
    else:
        runner = load_runner(Path(source), resolve_device(settings.train))
    return predict_folder(
        runner,
        input_dir,
        out_dir,
        mode,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        pairs=pairs,
        direction=settings.data.direction,
    )
