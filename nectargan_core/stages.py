"""The pipeline's stages, as DVC stages (through the CLI), Prefect tasks and the CLI all call them.

Each takes typed settings, the process's ``Tracker`` and paths, and returns paths and small
results. Training opens an MLflow run, records every setting, per-epoch metrics, example strips
and checkpoints, and registers the final checkpoint; the later stages log into the same run,
whose id they read from the training summary. Output folders default to the settings' layout.

Each stage imports the engine it runs inside its function, so that a DVC stage loads (and
depends on) only its own code: a change to evaluation never makes training stale.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nectargan_core.checkpoint import find_checkpoint
from nectargan_core.files import write_json_atomic
from nectargan_core.layout import EvaluationPaths, RunPaths, onnx_path
from nectargan_core.settings import Settings, with_changes

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nectargan_core.data.validate import ValidationResult
    from nectargan_core.inference.evaluate import EvaluationResult
    from nectargan_core.inference.onnx import ExportResult
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


def _update_summary(path: Path, extra: dict[str, object]) -> None:
    summary = json.loads(path.read_text()) if path.exists() else {}
    write_json_atomic(path, {**summary, **extra})


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
) -> TrainStageResult:
    """Train in an MLflow run and register the final checkpoint.

    ``train.continue_from`` may name a registered model (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``): it is fetched here unless the caller passes it as ``parent``
    (the Prefect flow fetches in a task of its own, with retries). The run records the URI as
    configured and is tagged with the parent version and run.

    Continuing a local run that was interrupted (its tracking run did not finish, the settings
    are the same) reopens that tracking run, so one training keeps one metric history; a run
    already at its total only finishes (it is registered if it was not yet).

    ``register=False`` (a sweep's children) trains and tracks without registering.

    Under torchrun every process calls this: rank 0 does all of the above, the others only train
    (``tracker`` may be None there: they never touch the tracking store).
    """
    from nectargan_core.device import resolve_device
    from nectargan_core.distributed import World, broadcast, destroy_process_group, init_process_group
    from nectargan_core.tracking.callback import MLflowCallback
    from nectargan_core.tracking.provenance import run_tags
    from nectargan_core.tracking.registry import register_model
    from nectargan_core.training import interrupt
    from nectargan_core.training.records import registered_versions
    from nectargan_core.training.trainer import train

    paths = RunPaths.of(settings)
    world = World.from_env()
    init_process_group(world, resolve_device(settings.train, world))
    if not world.is_main:  # rank 0 says whether there is training to do (a failure ends torchrun's job)
        result = train(settings) if broadcast(None, world) else None
        destroy_process_group()  # done already when it trained
        last = result.last_epoch if result else settings.train.total_epochs
        return TrainStageResult("", None, last, None, paths.summary)
    if tracker is None:
        raise ValueError("rank 0 trains in a tracking run: pass the tracker")

    ensure_validated(settings)
    parent = parent or fetch_parent(settings, tracker)
    run_settings, all_tags = settings, run_tags(settings, project_dir, tags)
    if parent is not None:
        run_settings = with_changes(settings, {"train.continue_from": str(parent.checkpoint)})
        all_tags |= {"parent_model": parent.uri, "parent_model_version": parent.version, "parent_run_id": parent.run_id}
    finished = _already_finished(settings, tracker, paths, project_dir) if parent is None else None
    if finished is not None:
        broadcast(False, world)
        destroy_process_group()
        return finished
    reopen = _interrupted_run(settings, tracker, paths, project_dir) if parent is None else None
    if reopen is not None:
        all_tags = {"continued": "true"}  # the run's own tags stay; its params are the same settings

    registered = registered_versions(paths.summary)  # read before training rewrites the summary
    broadcast(True, world)
    with tracker.start_run(all_tags, settings.tracking.system_metrics, run_id=reopen) as run_id:
        if reopen is None:
            tracker.log_settings(run_id, settings)
        recorder = MLflowCallback(tracker, run_id, settings.tracking.log_checkpoints)
        result = train(run_settings, [*callbacks, recorder], run={"mlflow_run_id": run_id})
        interrupt.check()  # a stop asked for after the last step: the run is KILLED, the continue finishes it
        version = registered.get(result.last_epoch) if not result.history else None
        diverged = _divergence(settings, result.history[-1]) if result.history else None
        if diverged:
            tracker.client.set_tag(run_id, "not_registered", diverged)
            _update_summary(paths.summary, {"mlflow_run_id": run_id, "not_registered": diverged})
            raise TrainingDiverged(
                f"{diverged}; the run is kept in {paths.root} (MLflow run {run_id}) but not registered, and "
                f"{settings.tracking.registered_model}@{settings.tracking.alias} did not move. Lower the learning "
                "rates or the loss weights (or raise train.diverged_above) and train again."
            )
        if result.checkpoint is not None and version is None and register:
            selected = paths.best if settings.train.select_by and paths.best.exists() else None
            version = register_model(tracker, run_id, result.checkpoint, settings, project_dir, selected)
        _log_compare_images(tracker, run_id, paths)
        _update_summary(
            paths.summary,
            {
                "mlflow_run_id": run_id,
                "tracking_uri": tracker.uri,
                "registered_model": settings.tracking.registered_model,
                "model_version": version,
                "registered_epoch": result.last_epoch if version else None,
                **{k: v for k, v in all_tags.items() if k.startswith("parent_")},
            },
        )
    return TrainStageResult(run_id, result.checkpoint, result.last_epoch, version, paths.summary)


def _log_compare_images(tracker: Tracker, run_id: str, paths: RunPaths) -> None:
    """The run's val curves and final strips under the names every run uses."""
    import tempfile

    from nectargan_core.reports.studies import final_strips, val_curves
    from nectargan_core.tracking.tracker import FINAL_STRIPS_NAME, VAL_CURVES_NAME

    with tempfile.TemporaryDirectory(prefix="nectargan-compare-") as folder:
        files = (
            [val_curves({paths.root.name: paths.epochs}, Path(folder) / VAL_CURVES_NAME)]
            if paths.epochs.exists()
            else []
        )
        if (strips := final_strips(paths.examples, Path(folder) / FINAL_STRIPS_NAME)) is not None:
            files.append(strips)
        tracker.log_compare_images(run_id, files)


def trained_result(summary: Path) -> TrainStageResult:
    """What a train stage that ran in other processes left in its summary."""
    recorded = json.loads(summary.read_text())
    checkpoint = recorded.get("checkpoint")
    version = recorded.get("model_version")
    return TrainStageResult(
        recorded["mlflow_run_id"],
        Path(checkpoint) if checkpoint else None,
        recorded["last_epoch"],
        str(version) if version else None,
        summary,
    )


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


def _already_finished(
    settings: Settings, tracker: Tracker, paths: RunPaths, project_dir: Path
) -> TrainStageResult | None:
    """A continue of the local run that trained to its total (or stopped early), was registered and whose
    tracking run finished: the result as it stands, without a new (empty) tracking run or a second
    registration."""
    from nectargan_core.checkpoint import CheckpointError, load_checkpoint
    from nectargan_core.tracking.tracker import settings_params
    from nectargan_core.training.records import registered_versions

    cfg = settings.train
    own = (None, str(paths.checkpoints), str(paths.latest))
    if not cfg.continue_train or cfg.continue_from not in own or cfg.load_epoch != "latest":
        return None
    try:
        recorded = json.loads(paths.summary.read_text())
        epoch = load_checkpoint(paths.latest, mmap=True).get("epoch")
    except (OSError, ValueError, CheckpointError):
        return None
    done = epoch == cfg.total_epochs or (recorded.get("stopped_early") and recorded.get("last_epoch") == epoch)
    version = registered_versions(paths.summary).get(epoch)
    run_id = recorded.get("mlflow_run_id")
    run = tracker.run(run_id) if version and run_id and done else None
    if run is None or run.info.status != "FINISHED":
        return None
    if _comparable(run.data.params, project_dir) != _comparable(settings_params(settings), project_dir):
        return None  # other settings: the trainer checks them against the checkpoint (and says what changed)
    log.info(
        "%s: already trained to epoch %d and registered as version %s (MLflow run %s); raise the total to train on",
        paths.root,
        epoch,
        version,
        run_id,
    )
    return TrainStageResult(run_id, paths.latest, epoch, str(version), paths.summary)


def _comparable(params: dict[str, str], project_dir: Path) -> dict[str, str]:
    """A run's params without the continue keys, paths absolute: a run the flow started (absolute
    paths) and its continue from the CLI (relative ones) have the same settings."""
    from nectargan_core.settings import PATH_KEYS

    # How many processes train changes how, not what: a run continues with another number of them.
    skip = ("train.continue_train", "train.load_epoch", "train.continue_from", "train.nproc_per_node")
    return {
        key: str(project_dir / value) if key in PATH_KEYS and value != "null" else value
        for key, value in params.items()
        if key not in skip
    }


def _dead_run_of_folder(settings: Settings, tracker: Tracker) -> str | None:
    """The newest RUNNING tracking run that trained into this output folder; called with the folder's
    lock held, so no live trainer owns it."""
    from nectargan_core.tracking.tracker import settings_params

    folder = settings_params(settings)["train.output_dir"]
    return tracker.newest_run(f"attributes.status = 'RUNNING' and params.`train.output_dir` = '{folder}'")


def _interrupted_run(settings: Settings, tracker: Tracker, paths: RunPaths, project_dir: Path) -> str | None:
    """The tracking run a local continue should reopen: the one in the checkpoint, if it never finished
    and had these settings. A dead run that is not reopened is marked KILLED, never left RUNNING."""
    from nectargan_core.checkpoint import CheckpointError, load_checkpoint
    from nectargan_core.files import Locked, held_lock
    from nectargan_core.tracking.tracker import settings_params

    cfg = settings.train
    if not cfg.continue_train or (cfg.continue_from or "").startswith("models:/"):
        return None
    try:
        with held_lock(paths.lock, f"train.output_dir {paths.root}"):  # no live trainer owns that run
            try:
                checkpoint = find_checkpoint(Path(cfg.continue_from or paths.checkpoints), cfg.load_epoch)
                run_id = load_checkpoint(checkpoint, mmap=True).get("run", {}).get("mlflow_run_id")
            except CheckpointError:
                if cfg.continue_from or not paths.lock.exists():
                    raise
                run_id = _dead_run_of_folder(settings, tracker)  # killed before its first checkpoint
    except (CheckpointError, Locked):
        return None  # the trainer reports these with the full story
    run = tracker.run(run_id) if run_id else None
    if run is None or run.info.status == "FINISHED":
        return None
    if _comparable(run.data.params, project_dir) == _comparable(settings_params(settings), project_dir):
        return run_id
    if run.info.status == "RUNNING":
        tracker.client.set_terminated(run_id, "KILLED")
    return None


def _training_run_id(settings: Settings) -> str:
    summary = RunPaths.of(settings).summary
    if not summary.exists():
        raise FileNotFoundError(f"{summary}: no training summary; run the train stage first")
    run_id = json.loads(summary.read_text()).get("mlflow_run_id")
    if not run_id:
        raise ValueError(f"{summary}: has no mlflow_run_id; train with `nectargan train` (the tracked stage)")
    return run_id


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
) -> list[Path]:
    """Run a checkpoint or snapshot file, an ONNX file or a registered model (``models:/...``, through
    its MLflow pyfunc; needs ``tracker``) over a folder of images."""
    from nectargan_core.device import resolve_device
    from nectargan_core.inference.predict import load_runner, predict_folder, pyfunc_runner
    from nectargan_core.tracking.registry import load_registered_model

    out_dir = out_dir or Path(settings.outputs.predict)
    if source.startswith("models:/"):
        if tracker is None:
            raise ValueError(f"{source}: a registered model needs the tracking store (pass a Tracker)")
        runner = pyfunc_runner(*load_registered_model(tracker, source))
    else:
        runner = load_runner(Path(source), resolve_device(settings.train))
    return predict_folder(runner, input_dir, out_dir, mode)
