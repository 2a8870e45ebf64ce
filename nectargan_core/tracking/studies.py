"""A study's runs in MLflow: one parent run per study (its name tagged), each child run under it
(``mlflow.parentRunId``) with its params hash, so a rerun finds the parent and skips finished
children; the parent ends FINISHED, FAILED (every child failed) or KILLED, and holds the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from nectargan_core.losses.metrics import HIGHER_IS_BETTER
from nectargan_core.metric_names import VAL_METRICS, val_metric
from nectargan_core.settings import Settings
from nectargan_core.tracking.provenance import params_hash
from nectargan_core.tracking.tracker import SWEEP_ARTIFACT, Tracker

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "nectargan.sweep"
CHILD_TAG = "nectargan.sweep_child"
ROLE_TAG = "nectargan.sweep_role"
HASH_TAG = "params_hash"
BEST_CHILD_TAG = "best_child"
TRIAL_TAG = "nectargan.trial"  # a search child's Optuna trial number
PRUNED_TAG = "nectargan.pruned_at_epoch"  # the epoch after which a pruner stopped the trial


@dataclass(frozen=True)
class ChildRecord:
    """A child run as MLflow holds it: its val metrics at the end, and each one's best value and epoch."""

    name: str
    run_id: str
    status: str  # finished | failed | running | killed
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, tuple[float, int]] = field(default_factory=dict)


def open_parent(tracker: Tracker, name: str, children: list[str]) -> str:
    """The study's parent run, running again if a rerun finds it, else new with its children's names."""
    query = f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'"
    found = tracker.newest_run(query)
    if found is not None:
        tracker.client.update_run(found, "RUNNING")
        return found
    run = tracker.client.create_run(tracker.experiment_id, tags={SWEEP_TAG: name, ROLE_TAG: "parent"}, run_name=name)
    tracker.client.log_param(run.info.run_id, "sweep.combinations", json.dumps(children)[:6000])
    return run.info.run_id


def end_parent(tracker: Tracker, parent: str, status: str) -> None:
    tracker.client.set_terminated(parent, status)


def child_tags(parent: str, name: str, child: str, run_name: str | None = None) -> dict[str, str]:
    """The tags that put a training run under the study's parent, and name it (``run_name``, else the
    child's name) in MLflow's runs table: MLflow takes its runName tag as the new run's name."""
    tags = {PARENT_TAG: parent, SWEEP_TAG: name, ROLE_TAG: "child", CHILD_TAG: child}
    return tags | {MLFLOW_RUN_NAME: run_name or child}


def children_filter(name: str) -> str:
    """The MLflow filter that finds a study's children."""
    return f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'child'"


def finished_child(tracker: Tracker, parent: str, settings: Settings) -> str | None:
    """The finished child of ``parent`` that trained exactly ``settings``, if a run before trained it."""
    query = f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{HASH_TAG}` = '{params_hash(settings)}'"
    return tracker.newest_run(f"{query} and attributes.status = 'FINISHED'")


def child_run_id(tracker: Tracker, parent: str, child: str) -> str | None:
    return tracker.newest_run(f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{CHILD_TAG}` = '{child}'")


def child_record(tracker: Tracker, run_id: str, name: str, status: str) -> ChildRecord:
    """A child's final and best val metrics, from its MLflow run."""
    metrics = tracker.client.get_run(run_id).data.metrics
    final = {val_metric(m).key: metrics[val_metric(m).key] for m in VAL_METRICS if val_metric(m).key in metrics}
    best = {}
    for metric in VAL_METRICS:
        history = tracker.client.get_metric_history(run_id, val_metric(metric).key)
        if history:
            sign = 1 if HIGHER_IS_BETTER[metric] else -1
            top = max(history, key=lambda m: (sign * m.value, -m.step))
            best[val_metric(metric).key] = (top.value, top.step)
    return ChildRecord(name, run_id, status, final, best)


def recorded_children(tracker: Tracker, name: str) -> list[ChildRecord]:
    """A study's children as MLflow holds them (for `nectargan compare --sweep`), oldest first."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], children_filter(name), order_by=["attributes.start_time ASC"]
    )
    if not runs:
        raise ValueError(f"no child runs of a sweep named {name!r} in experiment {tracker.experiment!r}")
    return [
        child_record(
            tracker,
            run.info.run_id,
            run.data.tags.get(CHILD_TAG, run.info.run_name),
            {"FINISHED": "finished", "FAILED": "failed"}.get(run.info.status, run.info.status.lower()),
        )
        for run in runs
    ]


def log_report(tracker: Tracker, parent: str, files: list) -> None:
    """The study's report files on its parent run, under SWEEP_ARTIFACT."""
    for path in files:
        tracker.client.log_artifact(parent, str(path), SWEEP_ARTIFACT)


def tag_best(tracker: Tracker, parent: str, best: str) -> None:
    tracker.client.set_tag(parent, BEST_CHILD_TAG, best)


def tag_pruned(tracker: Tracker, run_id: str, epoch: int) -> None:
    """A search trial's run, stopped by the pruner after ``epoch``."""
    tracker.client.set_tag(run_id, PRUNED_TAG, str(epoch))


def final_metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    """A run's last value of every metric."""
    return dict(tracker.client.get_run(run_id).data.metrics)
