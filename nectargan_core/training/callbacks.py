"""How the trainer reports progress: a small observer interface, plus the console reporter.

The trainer knows nothing of MLflow or Prefect; they attach here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from nectargan_core.losses.weights import weighted
from nectargan_core.metric_names import (
    IMAGES_PER_S,
    LOSS_D,
    LOSS_G,
    LR_D,
    LR_G,
    SECONDS,
    Metric,
    loss_metric,
    val_metric,
    weight_metric,
    weighted_metric,
)


@dataclass(frozen=True)
class EpochSummary:
    epoch: int
    total_epochs: int
    seconds: float
    images_per_s: float
    lr_g: float
    lr_d: float
    loss_d: float
    loss_g: float
    losses: dict[str, float] = field(default_factory=dict)  # active terms, unweighted means
    weights: dict[str, float] = field(default_factory=dict)  # every term's weight this epoch
    val: dict[str, float] = field(default_factory=dict)  # validation metrics, when validated this epoch

    def metrics(self) -> dict[Metric, float]:
        """Every number of the epoch by name; each sink spells the names its own way."""
        values = {
            SECONDS: self.seconds,
            IMAGES_PER_S: self.images_per_s,
            LR_G: self.lr_g,
            LR_D: self.lr_d,
            LOSS_D: self.loss_d,
            LOSS_G: self.loss_g,
        }
        for name, weight in self.weights.items():
            values[weight_metric(name)] = weight
        for name, value in self.losses.items():
            values[loss_metric(name)] = value
            values[weighted_metric(name)] = weighted(value, self.weights[name])
        for name, value in self.val.items():
            values[val_metric(name)] = value
        return values

    def as_row(self) -> dict[str, object]:
        """The epoch table's row; time and speed rounded, as a table shows them."""
        row: dict[str, object] = {"epoch": self.epoch}
        row.update((metric.column, value) for metric, value in self.metrics().items())
        row[SECONDS.column] = round(self.seconds, 4)
        row[IMAGES_PER_S.column] = round(self.images_per_s, 3)
        return row


class TrainingCallback:
    """Override what you need; every hook is a no-op by default."""

    def on_train_start(self, start_epoch: int, total_epochs: int, changed: list[str]) -> None: ...

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...

    def on_progress(self, epoch: int, step: int, live: dict[str, float]) -> None: ...

    def on_epoch_end(self, summary: EpochSummary) -> None: ...

    def stop_after(self, summary: EpochSummary) -> str | None:
        """Why training should stop after this epoch (None: go on); asked on rank 0 before the epoch's
        checkpoint, so a stop keeps what was trained and the run finishes normally."""
        return None

    def on_examples(self, epoch: int, paths: list[Path]) -> None: ...

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path) -> None:
        """The full state ``latest`` was replaced and this epoch's ``snapshot`` written."""

    def on_train_end(self, last_epoch: int, checkpoint: Path | None) -> None: ...


class ConsoleReporter(TrainingCallback):
    """A progress bar per epoch with live losses, and one line per finished epoch."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._bar: tqdm | None = None

    def on_train_start(self, start_epoch: int, total_epochs: int, changed: list[str]) -> None:
        if start_epoch > total_epochs:
            print(
                f"already at epoch {total_epochs} of {total_epochs}: nothing left to train, finishing", file=self.stream
            )
        elif start_epoch > 1:
            print(f"continuing at epoch {start_epoch} of {total_epochs}", file=self.stream)
        for line in changed:
            print(f"  changed since the checkpoint: {line}", file=self.stream)

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self._bar = tqdm(
            total=steps, desc=f"epoch {epoch}", leave=False, file=self.stream, dynamic_ncols=True, disable=None
        )

    def on_progress(self, epoch: int, step: int, live: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in live.items()}, refresh=True)

    def on_epoch_end(self, summary: EpochSummary) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        losses = "  ".join(f"{name} {value:.4f}" for name, value in summary.losses.items())
        val = "".join(f"  val {name} {value:.4f}" for name, value in summary.val.items())
        print(
            f"epoch {summary.epoch}/{summary.total_epochs}  {summary.seconds:.1f}s  "
            f"{summary.images_per_s:.1f} img/s  lr G {summary.lr_g:.3g} D {summary.lr_d:.3g}  "
            f"D {summary.loss_d:.4f}  G {summary.loss_g:.4f}  {losses}{val}",
            file=self.stream,
            flush=True,
        )

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path) -> None:
        print(f"  checkpoint {latest} (snapshot {snapshot.name})", file=self.stream)
