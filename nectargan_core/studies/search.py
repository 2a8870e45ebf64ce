"""`nectargan search`: an Optuna study over settings (loss weights, say), each trial trained as an
MLflow child run under the study's parent run (the bookkeeping of `nectargan sweep`), in a folder
of its own under ``outputs.sweeps/STUDY/runs/``.

A pruner may stop a trial after a validated epoch: the trainer ends there as after early stopping
(checkpoint, summary, a FINISHED run tagged with the epoch) and Optuna records the trial PRUNED. The
study lives in an Optuna storage (by default an SQLite file beside the MLflow store; any SQLAlchemy
URL), so a rerun of the same study continues it; a trial a killed process left RUNNING misses its
heartbeats, is failed by the next run and retried with the same values.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from nectargan_core.files import write_text_atomic
from nectargan_core.layout import OPTUNA_DB, SweepPaths
from nectargan_core.losses.metrics import HIGHER_IS_BETTER
from nectargan_core.settings import Settings, SettingsError, changes_label, load_settings, with_changes
from nectargan_core.studies.grid import ChildResult, Combination
from nectargan_core.studies.space import Axis, parse_space
from nectargan_core.studies.sweep import register_best, selected_metric
from nectargan_core.tracking import studies as records
from nectargan_core.tracking.tracker import Tracker, original_project
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback

log = logging.getLogger(__name__)

HEARTBEAT_S = 60  # a running trial writes a heartbeat this often ...
GRACE_S = 300  # ... and one silent this long (its process was killed) is failed by the next run
RETRIES = 2  # a trial failed for a missed heartbeat is tried again this often, with the same values


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    study: optuna.Study
    failed: int  # trials of this call that failed
    best: FrozenTrial | None
    model_version: str | None
    report: Path


def default_storage(project_dir: Path) -> str:
    """An SQLite file in the project, beside the embedded MLflow store."""
    return f"sqlite:///{original_project(project_dir) / OPTUNA_DB}"


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """median: below the median of earlier trials at the same epoch; halving: successive halving."""
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "halving": optuna.pruners.SuccessiveHalvingPruner,
        "none": optuna.pruners.NopPruner,
    }
    return pruners[name]()


def make_sampler(name: str, seed: int | None, axes: Sequence[Axis]) -> optuna.samplers.BaseSampler:
    """tpe, random, or grid (every combination of the choices; ``plan`` refuses it over a range)."""
    if name == "grid":
        return optuna.samplers.GridSampler({axis.key: list(axis.choices) for axis in axes}, seed=seed)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    return samplers[name](seed=seed)


def open_study(
    storage_url: str, name: str, sampler: str, seed: int | None, pruner: str, select_by: str, axes: Sequence[Axis]
) -> optuna.Study:
    """The study ``name`` in the storage, new or continued. A continued study's sampler is seeded past
    its trials, so a rerun with the same --seed samples new values, reproducibly."""
    with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = RDBStorage(
            storage_url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
        )
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        done = 0
    direction = "maximize" if HIGHER_IS_BETTER[selected_metric(select_by)] else "minimize"
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=make_sampler(sampler, None if seed is None else seed + done, axes),
        pruner=make_pruner(pruner),
        direction=direction,
        load_if_exists=True,
    )


def plan(
    params: Path,
    base_overrides: Sequence[str],
    specs: Sequence[str],
    file: Path | None,
    name: str,
    sampler: str = "tpe",
    select_by: str = "val/psnr",
) -> tuple[Settings, SweepPaths, list[Axis]]:
    """The base settings, the study's folder and its axes, all checked before anything (the storage
    included) is touched."""
    selected_metric(select_by)
    base = load_settings(params, base_overrides)
    axes = parse_space(specs, file, base, base_overrides)
    if sampler == "grid" and (ranges := [axis.key for axis in axes if not axis.choices]):
        raise ValueError(f"--sampler grid: {ranges[0]} is a range; the grid sampler takes choices only (a,b,c)")
    if not base.train.validate_every and "train.validate_every" not in {axis.key for axis in axes}:
        raise SettingsError(
            "search", ["train.validate_every is 0: trials are scored by val metrics; --base train.validate_every=1"]
        )
    return base, SweepPaths(Path(base.outputs.sweeps) / name), axes


class Pruning(TrainingCallback):
    """Reports each validated epoch's metric to the trial and stops the training where Optuna prunes it."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def stop_after(self, summary: EpochSummary) -> str | None:
        if self.metric not in summary.val:
            return None
        self.trial.report(summary.val[self.metric], summary.epoch)
        if summary.epoch == summary.total_epochs or not self.trial.should_prune():
            return None
        self.pruned_at = summary.epoch
        return f"pruned after epoch {summary.epoch}: val/{self.metric} {summary.val[self.metric]:.4f} (Optuna pruner)"


def _train(tracker: Tracker, project_dir: Path, settings: Settings, tags: dict[str, str], pruning: Pruning) -> str:
    """In this process (the pruner's callback needs the trial; torchrun's processes could not report);
    returns the MLflow run id."""
    from nectargan_core.launch import TrainRequest, start_training
    from nectargan_core.training.callbacks import ConsoleReporter

    request = TrainRequest(settings, tags, register=False)
    result = start_training(request, project_dir, tracker, [ConsoleReporter(), pruning])
    assert result is not None  # this process is rank 0
    return result.run_id


def trial_settings(base: Settings, paths: SweepPaths, trial: FrozenTrial | optuna.Trial) -> Settings:
    """The base with the trial's values, training into the trial's own folder."""
    changes = {**trial.params, "train.output_dir": paths.child(f"trial-{trial.number}")}
    return with_changes(base, changes, f"trial {trial.number}")


def search(
    tracker: Tracker,
    project_dir: Path,
    study: optuna.Study,
    paths: SweepPaths,
    base: Settings,
    axes: Sequence[Axis],
    trials: int,
    select_by: str,
    register: bool = False,
) -> SearchOutcome:
    """Run ``trials`` more trials of the study under its parent run (a trial that fails is marked
    failed and the search goes on), register the best trial when asked, write the report."""
    from nectargan_core.errors import describe_failure

    name, metric = study.study_name, selected_metric(select_by)
    parent = records.open_parent(tracker, name, [axis.spec for axis in axes])

    def objective(trial: optuna.Trial) -> float:
        for axis in axes:
            axis.suggest(trial)
        child = f"trial-{trial.number}"
        try:
            pruning = Pruning(trial, metric)
            run_name = f"{child} {changes_label(trial.params)}"
            tags = {**records.child_tags(parent, name, child, run_name), records.TRIAL_TAG: str(trial.number)}
            run_id = _train(tracker, project_dir, trial_settings(base, paths, trial), tags, pruning)
            trial.set_user_attr("mlflow_run_id", run_id)
            if pruning.pruned_at is not None:
                records.tag_pruned(tracker, run_id, pruning.pruned_at)
                trial.set_user_attr("pruned_at_epoch", pruning.pruned_at)
                raise optuna.TrialPruned(f"{child} pruned after epoch {pruning.pruned_at}")
            if select_by not in (final := records.final_metrics(tracker, run_id)):
                raise ValueError(f"{child}: its MLflow run has no {select_by}")
            return final[select_by]
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # one trial failing (NaN, say) does not stop the others
            trial.set_user_attr("error", error := describe_failure(exc))
            log.error("search %s: %s failed: %s", name, child, error)
            raise

    before = len(study.trials)
    try:
        study.optimize(objective, n_trials=trials, catch=(Exception,))
    except BaseException:
        records.end_parent(tracker, parent, "KILLED")
        raise
    ran = study.trials[before:]
    failed = sum(t.state == TrialState.FAIL for t in ran)
    records.end_parent(tracker, parent, "FAILED" if ran and failed == len(ran) else "FINISHED")
    best = best_trial(study)
    version = None
    if register and best is not None:
        child = ChildResult(
            Combination(f"trial-{best.number}", ()), trial_settings(base, paths, best), best.user_attrs["mlflow_run_id"]
        )
        version = register_best(tracker, parent, child, project_dir)
    report = write_report(tracker, parent, paths, study, select_by, best)
    return SearchOutcome(parent, study, failed, best, version, report)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial (pruned ones stopped early, so their values do not compete)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def table(study: optuna.Study) -> str:
    """Markdown: a row per trial, with its values, score, state and where it was pruned."""
    lines = ["| trial | params | value | state | pruned at epoch | MLflow run |", "|---:|---|---:|---|---:|---|"]
    for trial in study.trials:
        params = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in trial.params.items()
        )
        value = f"{trial.value:.4f}" if trial.value is not None else "–"
        state = trial.state.name.lower()
        if error := trial.user_attrs.get("error"):
            state = f"failed: {error[:80]}"
        pruned = trial.user_attrs.get("pruned_at_epoch", "–")
        run = trial.user_attrs.get("mlflow_run_id", "–")
        lines.append(f"| {trial.number} | {params} | {value} | {state} | {pruned} | {run} |")
    return "\n".join(lines) + "\n"


def write_report(
    tracker: Tracker, parent: str, paths: SweepPaths, study: optuna.Study, select_by: str, best: FrozenTrial | None
) -> Path:
    """report.md, history.png and (with two or more complete trials) importance.png in the study's
    folder, logged to the parent run; returns the report."""
    from nectargan_core.reports.studies import importance_bars, optimisation_history

    paths.root.mkdir(parents=True, exist_ok=True)
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    scored = [(t.number, t.value, t.state.name) for t in study.trials if t.value is not None]
    images = [optimisation_history(scored, higher, select_by, paths.history)]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        images.append(importance_bars(optuna.importance.get_param_importances(study), paths.importance))
        importance = ""
    else:
        importance = f"\nParameter importance needs at least 2 complete trials ({len(complete)} so far).\n"
    chosen = ""
    if best is not None:
        run = best.user_attrs.get("mlflow_run_id", "–")
        chosen = f"\nBest by {select_by}: **trial {best.number}** ({best.value:.4f}; MLflow run {run}): {best.params}\n"
    shown = "".join(f"\n![{p.stem}]({p.name})\n" for p in images)
    direction = "highest" if higher else "lowest"
    text = f"# Search {study.study_name}\n\nTrials by {select_by} ({direction} is best):\n\n{table(study)}"
    write_text_atomic(paths.report, f"{text}{chosen}{importance}{shown}")
    records.log_report(tracker, parent, [paths.report, *images])
    return paths.report
