"""Which MLflow run a training folder belongs to, and that run's life: opened new or reopened after a
kill, tagged, registered, finished. A continue of a local run keeps one run (one metric history); a
run that already trained to its total is only reported; a dead run that is not reopened is marked
KILLED, never left RUNNING.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from nectargan_core.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from nectargan_core.files import Locked, held_lock
from nectargan_core.layout import RunPaths
from nectargan_core.settings import PATH_KEYS, Settings, with_changes
from nectargan_core.tracking.callback import MLflowCallback
from nectargan_core.tracking.journal import Journal
from nectargan_core.tracking.provenance import TrainingData, run_tags, training_data
from nectargan_core.tracking.registry import RegisteredCheckpoint, register_model, registered_version
from nectargan_core.tracking.tracker import Tracker, settings_params, unreachable
from nectargan_core.training.summary import RunSummary

log = logging.getLogger(__name__)

NOT_REGISTERED_TAG = "not_registered"
CONTINUED_TAG = "continued"
# How many processes train changes how, not what: a run continues with another number of them.
_CONTINUE_KEYS = ("train.continue_train", "train.load_epoch", "train.continue_from", "train.nproc_per_node")


@dataclass(frozen=True)
class FinishedTraining:
    """A local run that trained to its total (or stopped early), was registered and finished."""

    run_id: str
    epoch: int
    version: str


@dataclass(frozen=True)
class TrainingPlan:
    """What a training does in the tracking store: trains in a new run or reopens ``reopen``, or only
    reports ``finished``. The run records ``settings`` as configured; the trainer gets ``trains``
    (with a registered parent: its downloaded file in place of the ``models:/`` URI)."""

    settings: Settings
    tags: dict[str, str] = field(default_factory=dict)
    reopen: str | None = None
    finished: FinishedTraining | None = None
    local: Settings | None = None
    data: TrainingData | None = None

    @property
    def trains(self) -> Settings:
        return self.local or self.settings

    @property
    def parent_tags(self) -> dict[str, str]:
        return {key: value for key, value in self.tags.items() if key.startswith("parent_")}


def plan_training(
    tracker: Tracker,
    settings: Settings,
    project_dir: Path,
    parent: RegisteredCheckpoint | None = None,
    tags: dict[str, str] | None = None,
) -> TrainingPlan:
    """Decide which run a training of ``settings`` belongs to (see the module docstring)."""
    all_tags = run_tags(settings, project_dir, tags)
    if parent is not None:
        local = with_changes(settings, {"train.continue_from": str(parent.checkpoint)})
        lineage = {"parent_model": parent.uri, "parent_model_version": parent.version, "parent_run_id": parent.run_id}
        return TrainingPlan(settings, all_tags | lineage, local=local, data=training_data(settings, project_dir))
    paths = RunPaths.of(settings)
    if (finished := _finished(tracker, settings, paths, project_dir)) is not None:
        return TrainingPlan(settings, finished=finished)
    data = training_data(settings, project_dir)
    if (reopen := _interrupted(tracker, settings, paths, project_dir)) is not None:
        return TrainingPlan(settings, {CONTINUED_TAG: "true"}, reopen=reopen, data=data)  # its tags and params stay
    return TrainingPlan(settings, all_tags, data=data)


@dataclass(frozen=True)
class TrainingRun:
    """An open MLflow run of a training; what the server cannot take goes to the run's journal."""

    tracker: Tracker
    run_id: str
    journal: Journal

    def recorder(self, settings: Settings) -> MLflowCallback:
        """The trainer's hook that logs each epoch into this run."""
        return MLflowCallback(self.journal, self.run_id, settings.tracking.log_checkpoints)

    def refuse_registration(self, reason: str) -> None:
        self.journal.send({"kind": "tag", "run": self.run_id, "key": NOT_REGISTERED_TAG, "value": reason})

    def register(self, full_state: Path, settings: Settings, project_dir: Path, selected: Path | None) -> str | None:
        """The new model version, or None when the server is away (the journal keeps the registration)."""
        self.journal.try_again()  # the end of training: the server is asked again
        if not self.journal.flush():
            self.journal.send(_registration(self.run_id, full_state, settings, project_dir, selected))
            return None
        try:
            return register_model(self.tracker, self.run_id, full_state, settings, project_dir, selected)
        except Exception as exc:
            if not unreachable(exc):
                raise
            self.journal.try_again()  # sent again, idempotently: a version made before the drop is found
            self.journal.send(_registration(self.run_id, full_state, settings, project_dir, selected))
            return None

    def registered_version(self, settings: Settings, epoch: int) -> str | None:
        """The version this run registered at ``epoch`` before it was killed (None: not registered)."""
        return registered_version(self.tracker, settings, self.run_id, epoch)

    def log_compare_images(self, files: list[Path]) -> None:
        """At the top of the run's artifacts, where MLflow's Compare page looks (see the tracker's names)."""
        for path in files:
            self.journal.send({"kind": "artifact", "run": self.run_id, "file": str(path), "folder": None})


def _registration(
    run_id: str, full_state: Path, settings: Settings, project_dir: Path, selected: Path | None
) -> dict[str, object]:
    epoch = int(load_checkpoint(full_state, mmap=True)["epoch"])
    return {
        "kind": "register",
        "run": run_id,
        "epoch": epoch,
        "full_state": str(full_state),
        "selected": str(selected) if selected else None,
        "settings": settings.model_dump(mode="json"),
        "project": str(project_dir),
    }


@contextmanager
def training_run(tracker: Tracker, plan: TrainingPlan) -> Iterator[TrainingRun]:
    """The plan's run, open while the block trains: new runs record every setting as params, and every
    run the data it trains on (MLflow keeps a dataset input once: a reopened run adds one only if the
    data changed). It ends FINISHED, FAILED when the block raises, KILLED when it is interrupted. When
    the server is away at the end, the run's outputs are complete locally and ``ServerAway`` says how
    to finish logging."""
    settings = plan.settings
    journal = Journal(tracker, RunPaths.of(settings))

    def keep_end(run_id: str, status: str) -> None:
        journal.send({"kind": "end", "run": run_id, "status": status})

    with tracker.start_run(plan.tags, settings.tracking.system_metrics, plan.reopen, keep_end) as run_id:
        if plan.reopen is None:
            journal.send({"kind": "params", "run": run_id, "values": settings_params(settings)})
        if plan.data is not None:
            journal.send({"kind": "dataset", "run": run_id, **dataclasses.asdict(plan.data)})
        yield TrainingRun(tracker, run_id, journal)
        journal.try_again()
        journal.flush()
    if journal.pending():
        raise journal.unsent_error()


@contextmanager
def reopened(tracker: Tracker, run_id: str, paths: RunPaths) -> Iterator[TrainingRun]:
    """A finished run open again for a late addition (a sweep registering its best child)."""
    with tracker.start_run({}, system_metrics=False, run_id=run_id):
        yield TrainingRun(tracker, run_id, Journal(tracker, paths))


def _comparable(params: dict[str, str], project_dir: Path) -> dict[str, str]:
    """A run's params without the continue keys, paths absolute: a run the flow started (absolute
    paths) and its continue from the CLI (relative ones) have the same settings."""
    return {
        key: str(project_dir / value) if key in PATH_KEYS and value != "null" else value
        for key, value in params.items()
        if key not in _CONTINUE_KEYS
    }


def _same_settings(params: dict[str, str], settings: Settings, project_dir: Path) -> bool:
    return _comparable(params, project_dir) == _comparable(settings_params(settings), project_dir)


def _continues_own_folder(settings: Settings, paths: RunPaths) -> bool:
    cfg = settings.train
    own = (None, str(paths.checkpoints), str(paths.latest))
    return cfg.continue_train and cfg.continue_from in own and cfg.load_epoch == "latest"


def _finished(tracker: Tracker, settings: Settings, paths: RunPaths, project_dir: Path) -> FinishedTraining | None:
    """A continue of the local run that trained to its total (or stopped early), was registered and whose
    tracking run finished: nothing to train, no new (empty) tracking run, no second registration."""
    if not _continues_own_folder(settings, paths):
        return None
    summary = RunSummary.read(paths.summary)
    try:
        epoch = load_checkpoint(paths.latest, mmap=True).get("epoch")
    except (OSError, CheckpointError):
        return None
    if summary is None or summary.mlflow_run_id is None:
        return None
    done = epoch == settings.train.total_epochs or (summary.stopped_early and summary.last_epoch == epoch)
    version = summary.registered_versions().get(epoch)
    run = tracker.run(summary.mlflow_run_id) if version and done else None
    if run is None or run.info.status != "FINISHED":
        return None
    if not _same_settings(run.data.params, settings, project_dir):
        return None  # other settings: the trainer checks them against the checkpoint (and says what changed)
    log.info(
        "%s: already trained to epoch %d and registered as version %s (MLflow run %s); raise the total to train on",
        paths.root,
        epoch,
        version,
        summary.mlflow_run_id,
    )
    return FinishedTraining(summary.mlflow_run_id, epoch, version)


def _dead_run_of_folder(tracker: Tracker, settings: Settings) -> str | None:
    """The newest RUNNING tracking run that trained into this output folder; called with the folder's
    lock held, so no live trainer owns it."""
    folder = settings_params(settings)["train.output_dir"]
    return tracker.newest_run(f"attributes.status = 'RUNNING' and params.`train.output_dir` = '{folder}'")


def _interrupted(tracker: Tracker, settings: Settings, paths: RunPaths, project_dir: Path) -> str | None:
    """The tracking run a local continue should reopen: the one in the checkpoint, if it never finished
    and had these settings. A dead run that is not reopened is marked KILLED."""
    cfg = settings.train
    if not cfg.continue_train or (cfg.continue_from or "").startswith("models:/"):
        return None
    # A run began here (its lock file stays); where none did, no lock file is made: the trainer reads it.
    started = paths.lock.exists()
    guard = held_lock(paths.lock, f"train.output_dir {paths.root}") if started else nullcontext()
    try:
        with guard:  # no live trainer owns that run
            try:
                checkpoint = find_checkpoint(Path(cfg.continue_from or paths.checkpoints), cfg.load_epoch)
                run_id = load_checkpoint(checkpoint, mmap=True).get("run", {}).get("mlflow_run_id")
            except CheckpointError:
                if cfg.continue_from or not started:
                    raise
                run_id = _dead_run_of_folder(tracker, settings)  # killed before its first checkpoint
    except (CheckpointError, Locked):
        return None  # the trainer reports these with the full story
    run = tracker.run(run_id) if run_id else None
    if run is None or run.info.status == "FINISHED":
        return None
    if _same_settings(run.data.params, settings, project_dir):
        return run_id
    if run.info.status == "RUNNING":
        tracker.client.set_terminated(run_id, "KILLED")
    return None
