"""The Prefect flow: validate -> (fetch parent) -> train -> examples -> evaluate.

Each task is a thin wrapper over a stage function of ``nectargan_core.stages`` (the same ones
`dvc repro` runs) and passes paths, ids and small results, never models or tensors. The flow
opens the tracking store once and hands the tracker to every task.
Tasks are called directly, so they run on the flow's main thread. Prefect turns a SIGTERM into an
exception wherever the flow happens to be; during training it asks for a stop after the current step
instead, so a cancelled flow run never breaks off a write to the tracking store or a checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.artifacts import ProgressArtifact, best_effort
from nectargan_core.checkpoint import CheckpointError
from nectargan_core.errors import describe_failure
from nectargan_core.inference.evaluate import EvaluationResult
from nectargan_core.inference.onnx import ExportResult
from nectargan_core.launch import TrainRequest, start_training
from nectargan_core.layout import SweepPaths
from nectargan_core.settings import Settings, anchored, load_settings, with_changes
from nectargan_core.stages import (
    DatasetInvalid,
    TrainStageResult,
    evaluate_stage,
    examples_stage,
    export_stage,
    fetch_parent,
    validate_stage,
)
from nectargan_core.tracking.registry import RegisteredCheckpoint, RegistryError
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.callbacks import ConsoleReporter
from nectargan_core.training.interrupt import stop_at_step_boundary

MAX_INLINE_BYTES = 2_000_000
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_images(report: Path) -> str:
    """The markdown of ``report`` with its local PNGs embedded as data URIs: the Prefect UI (in another
    browser, maybe on another machine) cannot open files next to the report."""

    def embed(match: re.Match[str]) -> str:
        path = report.parent / match.group(2)
        if not path.is_file() or path.stat().st_size > MAX_INLINE_BYTES:
            return f"{match.group(0)} (not embedded: {path})"
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return _IMAGE.sub(embed, report.read_text())


P = ParamSpec("P")
R = TypeVar("R")


def clear_failure(fn: Callable[P, R]) -> Callable[P, R]:
    """The task fails with the same one line the CLI prints (describe_failure), not a traceback;
    the exception stays the state's result, so ``_run`` re-raises it in the flow."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return Failed(message=describe_failure(exc), data=exc)  # type: ignore[return-value]

    return wrapper


def _run(task_: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Call a task in the flow and return its result, raising the task's own exception on failure."""
    return task_(*args, return_state=True, **kwargs).result()  # type: ignore[call-arg]


@task(name="validate dataset", cache_policy=NO_CACHE)
@clear_failure
def validate_task(settings: Settings) -> int:
    """Returns the number of pairs; a failing dataset becomes a table artifact and stops the flow."""
    try:
        result = validate_stage(settings)
    except DatasetInvalid as exc:
        failures, table = exc.result.failures, exc.result.table()
        best_effort("dataset-validation", create_table_artifact, failures, key="dataset-validation", description=table)
        raise
    rows = [{"rule": "every rule", "result": "passed", "pairs": result.pairs, "report": str(result.report_csv)}]
    best_effort("dataset-validation", create_table_artifact, rows, key="dataset-validation", description=result.table())
    return result.pairs


def _io_failure(task, task_run, state) -> bool:
    """Retry downloads that failed on I/O, not lookups that can never succeed."""
    return not isinstance(state.result(raise_on_failure=False), RegistryError | CheckpointError | ValueError)


@task(
    name="fetch registered checkpoint",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_io_failure,
    cache_policy=NO_CACHE,
)
@clear_failure
def fetch_task(settings: Settings, tracker: Tracker) -> RegisteredCheckpoint | None:
    return fetch_parent(settings, tracker)


@task(name="train", cache_policy=NO_CACHE)
@clear_failure
def train_task(
    settings: Settings, tracker: Tracker, project_dir: Path, parent: RegisteredCheckpoint | None
) -> TrainStageResult:
    """In this process, or with train.nproc_per_node > 1 in that many processes through torchrun (the
    processes fetch a registered parent themselves; their progress is in this task's output)."""
    request = TrainRequest(settings, {"prefect_flow_run_id": str(flow_run.id)})
    stop = stop_at_step_boundary(signals=(signal.SIGTERM,)) if _on_main_thread() else contextlib.nullcontext()
    with stop:
        return start_training(request, project_dir, tracker, [ConsoleReporter(), ProgressArtifact()], parent)


def _on_main_thread() -> bool:
    """Signal handlers can only be set there."""
    return threading.current_thread() is threading.main_thread()


@task(name="export examples", cache_policy=NO_CACHE)
@clear_failure
def examples_task(settings: Settings, tracker: Tracker) -> list[Path]:
    return examples_stage(settings, tracker)


@task(name="evaluate", cache_policy=NO_CACHE)
@clear_failure
def evaluate_task(settings: Settings, tracker: Tracker) -> EvaluationResult:
    result = evaluate_stage(settings, tracker)
    best_effort("evaluation-report", create_markdown_artifact, inline_images(result.report), key="evaluation-report")
    return result


@task(name="export ONNX", cache_policy=NO_CACHE)
@clear_failure
def export_task(settings: Settings, tracker: Tracker) -> ExportResult:
    return export_stage(settings, tracker)


def _summary(trained: TrainStageResult, evaluation: EvaluationResult, settings: Settings) -> str:
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in evaluation.metrics.items())
    return (
        f"# NectarGAN run {trained.run_id}\n\n"
        f"- trained to epoch **{trained.last_epoch}**, checkpoint `{trained.checkpoint}`\n"
        f"- registered `models:/{settings.tracking.registered_model}/{trained.model_version}` "
        f"(alias `{settings.tracking.alias}`)\n"
        f"- MLflow run `{trained.run_id}` in experiment `{settings.tracking.experiment}`\n\n"
        f"## Evaluation on {evaluation.split}\n\n| metric | mean |\n|---|---:|\n{metrics}\n"
    )


def _extend(settings: Settings, parent: RegisteredCheckpoint | None, more_epochs: int) -> Settings:
    if parent is None:
        raise ValueError("more_epochs needs continue_from to name a registered model (models:/NAME@ALIAS)")
    changes: dict[str, object] = {}
    for net in ("generator", "discriminator"):
        changes |= {f"train.{net}.epochs": parent.epoch + more_epochs, f"train.{net}.epochs_decay": 0}
    return with_changes(settings, changes, "the flow parameter more_epochs")


@flow(name="nectargan-pipeline", log_prints=True)
def pipeline(
    settings: Settings | None = None,
    continue_from: str | None = None,
    more_epochs: int = 0,
    export_onnx: bool = False,
    project_dir: str = ".",
) -> dict[str, object]:
    """Validate the dataset, train (or continue), export examples and evaluate.

    Prefect's form shows each parameter's line of Args.

    Args:
        settings: every setting of params.yaml (empty: read project_dir/params.yaml).
        continue_from: a registered checkpoint (models:/NAME@ALIAS, models:/NAME/VERSION) or a
            checkpoint path to continue from; train.load_epoch picks another epoch of that run.
        more_epochs: with a registered continue_from, train this many epochs past the parent's epoch
            at the initial learning rate (for scheduled fine-tuning; 0 = the configured total).
        export_onnx: also export the generator to ONNX, checked against PyTorch.
        project_dir: the project folder on the worker, holding params.yaml and the outputs.
    """
    project = Path(project_dir).resolve()
    settings = settings or load_settings(project / "params.yaml")
    if continue_from:
        changes = {"train.continue_train": True, "train.continue_from": continue_from}
        settings = with_changes(settings, changes, "the flow parameter continue_from")
    settings = anchored(settings, project)
    try:
        tracker = Tracker.connect(settings.tracking, project)
        _run(validate_task, settings)
        parent = _run(fetch_task, settings, tracker)
        if more_epochs:
            settings = _extend(settings, parent, more_epochs)
        trained = _run(train_task, settings, tracker, project, parent)
        _run(examples_task, settings, tracker)
        evaluation = _run(evaluate_task, settings, tracker)
        exported = _run(export_task, settings, tracker) if export_onnx else None
    except Exception as exc:
        reason = describe_failure(exc)
        failed = f"# NectarGAN run failed\n\n**{type(exc).__name__}**: {reason}\n"
        best_effort("run-summary", create_markdown_artifact, failed, key="run-summary")
        return Failed(message=reason, data=exc)  # type: ignore[return-value]
    except BaseException as exc:
        stopped = f"# NectarGAN run stopped\n\n**{type(exc).__name__}**\n"
        best_effort("run-summary", create_markdown_artifact, stopped, key="run-summary")
        raise
    best_effort("run-summary", create_markdown_artifact, _summary(trained, evaluation, settings), key="run-summary")
    get_run_logger().info("MLflow run %s, model version %s", trained.run_id, trained.model_version)
    return {
        "mlflow_run_id": trained.run_id,
        "model_version": trained.model_version,
        "last_epoch": trained.last_epoch,
        "metrics": evaluation.metrics,
        "onnx": str(exported.path) if exported else None,
    }


@task(name="train sweep child", cache_policy=NO_CACHE)
@clear_failure
def train_child_task(settings: Settings, tracker: Tracker, project_dir: Path, tags: dict[str, str]) -> str:
    """One child, like the train task: in this process, or on all GPUs (train.nproc_per_node) via torchrun."""
    request = TrainRequest(settings, tags, register=False)
    return start_training(request, project_dir, tracker, [ConsoleReporter()]).run_id


@flow(name="nectargan-sweep", log_prints=True)
def sweep_flow(
    grid: list[str] | None = None,
    base: list[str] | None = None,
    name: str | None = None,
    register_best: bool = False,
    select_by: str = "val/psnr",
    project_dir: str = ".",
) -> dict[str, object]:
    """Train every combination of a grid of settings as MLflow child runs under one parent run.

    Prefect's form shows each parameter's line of Args.

    Args:
        grid: axes like "train.loss.l1=50,100" (top-level commas separate the values).
        base: settings every child shares, like "train.generator.epochs=50" (the CLI's --base).
        name: the sweep's name (default: from the grid; rerunning a sweep skips its finished children).
        register_best: register the best child by select_by, which moves the alias.
        select_by: the val metric that picks the best child: val/psnr, val/ssim (highest) or val/l1 (lowest).
        project_dir: the project folder on the worker, holding params.yaml and the outputs.
    """
    from nectargan_core.studies import grid as study
    from nectargan_core.studies.sweep import sweep

    project = Path(project_dir).resolve()
    combinations = study.grid(grid or ["train.loss.l1=50,100"])
    name = name or study.sweep_name(combinations)
    settings, paths, children = study.plan(project / "params.yaml", base or [], combinations, name)
    paths = SweepPaths(project / paths.root)
    children = [study.ChildResult(child.combination, anchored(child.settings, project)) for child in children]
    tracker = Tracker.connect(settings.tracking, project)
    _run(validate_task, anchored(settings, project))

    def train_child(child: study.ChildResult, tags: dict[str, str]) -> str:
        return _run(train_child_task, child.settings, tracker, project, tags)

    done = sweep(tracker, project, name, paths, children, select_by, register_best, train_child=train_child)
    best_effort("sweep-report", create_markdown_artifact, inline_images(done.report), key="sweep-report")
    return {
        "parent_run_id": done.parent_run_id,
        "children": {c.combination.name: {"run_id": c.run_id, "status": c.status} for c in done.children},
        "best": done.best.combination.name if done.best else None,
        "model_version": done.model_version,
        "report": str(done.report),
    }
