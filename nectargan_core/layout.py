"""Where every file of a run and of the stages lives, and how its name is spelled: the one home.

A training run (``train.output_dir``)::

    checkpoints/latest.pt              the one rolling full state (every ``checkpoint_every`` epochs and
                                       the last): what continues training, and the final state at the end
    snapshots/epoch_NNNN.pt            what a user looks back at (``train.snapshot``), the newest
                                       ``keep_checkpoints``; no DVC output, so they cost no cache
    examples/epoch_NNNN_sample_KK.png  input | generated | target per fixed validation sample
    loss_log.csv                       per-iteration losses (appended every ``dump_frequency`` epochs)
    epochs.csv                         one row per epoch (a DVC plot)
    summary.json                       where things are, the final losses, the MLflow run id
    previous/                          the earlier run, set aside by a fresh one (a complete one stays
                                       until a newer run completes)
    parent/                            a registered checkpoint downloaded to continue from
    mlflow_journal/records.jsonl       what the tracking server did not take while it was away (sent
                                       when it is back, or by `nectargan runs sync`); files/ holds
                                       copies of kept files from outside the run folder

The stages after training write into the folders of the ``outputs`` settings group; dvc.yaml
names the same paths through ``${...}`` interpolation (a test checks that they agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nectargan_core.settings import Settings

LATEST_NAME = "latest.pt"
LOCK_NAME = ".nectargan.lock"
JOURNAL_FOLDER = "mlflow_journal"
CHECKPOINT_PATTERN = "epoch_NNNN.pt"
STRIP_PATTERN = "epoch_NNNN_sample_KK.png"
_CHECKPOINT = re.compile(r"^epoch_(\d{4,})\.pt$")
_STRIP = re.compile(r"^epoch_(\d{4,})_sample_(\d+)\.png$")


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch of a checkpoint file name, or None when the name is not one."""
    match = _CHECKPOINT.match(name)
    return int(match[1]) if match else None


def strip_name(epoch: int, sample: int) -> str:
    return f"epoch_{epoch:04d}_sample_{sample:02d}.png"


def strip_key(name: str) -> tuple[int, int] | None:
    """(epoch, sample) of an example strip file name, or None when the name is not one."""
    match = _STRIP.match(name)
    return (int(match[1]), int(match[2])) if match else None


def find_strips(examples_dir: Path) -> dict[tuple[int, int], Path]:
    """Every example strip in ``examples_dir``, keyed by ``(epoch, sample)``; other files are ignored."""
    if not examples_dir.is_dir():
        raise FileNotFoundError(
            f"examples folder {examples_dir} does not exist: pass the run's examples/ folder "
            "(train.output_dir/examples), or train at least one epoch first"
        )
    return {key: path for path in examples_dir.iterdir() if (key := strip_key(path.name)) and path.is_file()}


@dataclass(frozen=True)
class RunPaths:
    """The files of one training run under ``root`` (``train.output_dir``)."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> RunPaths:
        return cls(Path(settings.train.output_dir))

    @property
    def checkpoints(self) -> Path:
        """Holds ``latest.pt``, the file DVC versions (a file output, so the cache can hard-link it)."""
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST_NAME

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def best(self) -> Path:
        """The generator of the best validated epoch (train.select_by), as of the newest full state."""
        return self.snapshots / "best.pt"

    def best_candidate(self, epoch: int) -> Path:
        """A new best epoch's generator, until the next full state makes it ``best``: a kill in between
        leaves ``best`` as the full state it belongs with."""
        return self.snapshots / f"best_{epoch:04d}.pt"

    def best_candidates(self) -> dict[int, Path]:
        found = {}
        for path in self.snapshots.glob("best_*.pt") if self.snapshots.is_dir() else ():
            if (number := path.stem.removeprefix("best_")).isdigit():
                found[int(number)] = path
        return found

    @property
    def examples(self) -> Path:
        return self.root / "examples"

    @property
    def loss_log(self) -> Path:
        return self.root / "loss_log.csv"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    @property
    def parent(self) -> Path:
        return self.root / "parent"

    @property
    def journal(self) -> Path:
        """Append-only JSON lines: the records MLflow did not take yet, and which were sent since."""
        return self.root / JOURNAL_FOLDER / "records.jsonl"

    @property
    def journal_files(self) -> Path:
        return self.root / JOURNAL_FOLDER / "files"

    @property
    def lock(self) -> Path:
        """Held while a process trains into this folder: one writer at a time."""
        return self.root / LOCK_NAME

    @property
    def records(self) -> tuple[Path, ...]:
        """What a fresh run sets aside in ``previous/``."""
        return (
            self.checkpoints,
            self.snapshots,
            self.examples,
            self.loss_log,
            self.epochs,
            self.summary,
            self.journal.parent,
        )


@dataclass(frozen=True)
class ValidationPaths:
    root: Path

    @property
    def csv(self) -> Path:
        return self.root / "validation.csv"

    @property
    def json(self) -> Path:
        return self.root / "validation.json"


@dataclass(frozen=True)
class EvaluationPaths:
    root: Path

    @property
    def table(self) -> Path:
        return self.root / "per_image.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def samples(self) -> Path:
        """Best/worst strips; ``report.md`` links them by this folder's name."""
        return self.root / "samples"


ONNX_NAME = "generator.onnx"


def onnx_path(settings: Settings) -> Path:
    return Path(settings.outputs.export) / ONNX_NAME


def parity_path(onnx_file: Path) -> Path:
    """The parity report beside an ONNX file: ``generator.onnx`` -> ``generator.parity.json``."""
    return onnx_file.with_suffix(".parity.json")


@dataclass(frozen=True)
class ReviewPaths:
    root: Path

    @property
    def montage(self) -> Path:
        return self.root / "montage.png"

    @property
    def losses(self) -> Path:
        return self.root / "losses.png"

    @property
    def loss_terms(self) -> Path:
        return self.root / "loss_terms.png"

    @property
    def learning_rates(self) -> Path:
        return self.root / "learning_rates.png"


@dataclass(frozen=True)
class ComparePaths:
    root: Path

    @property
    def leaderboard_csv(self) -> Path:
        return self.root / "leaderboard.csv"

    @property
    def leaderboard_md(self) -> Path:
        return self.root / "leaderboard.md"

    @property
    def side_by_side(self) -> Path:
        return self.root / "side_by_side.png"


@dataclass(frozen=True)
class SweepPaths:
    """One study (a sweep or a search) under ``outputs.sweeps/NAME``: a training folder per child and the report."""

    root: Path

    def child(self, name: str) -> Path:
        """The child's train.output_dir (its own, so no child sets aside or locks another's run)."""
        return self.root / "runs" / name

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def val_curves(self) -> Path:
        return self.root / "val_curves.png"

    @property
    def grid(self) -> Path:
        return self.root / "grid.png"

    @property
    def history(self) -> Path:
        """A search's optimisation history."""
        return self.root / "history.png"

    @property
    def importance(self) -> Path:
        """A search's parameter importance."""
        return self.root / "importance.png"


OPTUNA_DB = "optuna.db"
"""The default Optuna storage of `nectargan search`: an SQLite file beside the embedded MLflow store."""


def where_things_are(settings: Settings) -> list[tuple[str, str]]:
    """(what, where) for every output of the pipeline, as these settings place them."""
    run = RunPaths.of(settings)
    outputs = settings.outputs
    evaluation, review = EvaluationPaths(Path(outputs.eval)), ReviewPaths(Path(outputs.review))
    validation, onnx_file = ValidationPaths(Path(outputs.validation)), onnx_path(settings)
    return [
        ("sample data", f"{settings.sample.out}/{{train,val,test}} (A label map | B facade per file)"),
        ("validation report", f"{validation.csv} (empty when every rule passed)"),
        ("full state (continue)", str(run.latest)),
        ("snapshots", str(run.snapshots / CHECKPOINT_PATTERN)),
        ("example strips", f"{run.examples}/ (per epoch), {outputs.examples}/ (final)"),
        ("losses", f"{run.epochs}, {run.loss_log} (dvc plots show)"),
        ("evaluation", f"{evaluation.report}, {evaluation.table.name}, {evaluation.metrics.name} (dvc metrics show)"),
        ("ONNX generator", f"{onnx_file} (parity: {parity_path(onnx_file).name})"),
        (
            "review images",
            f"{review.montage}, {review.losses.name}, {review.loss_terms.name}, {review.learning_rates.name}",
        ),
    ]
