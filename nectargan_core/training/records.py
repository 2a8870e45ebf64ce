"""Append-only records of a run: the per-iteration loss log and the per-epoch table.

Both are CSV files with a fixed header, so appending is O(new rows) and a continued run can add
to them even when it activates other losses. The loss log is long-format (one row per loss per
iteration); the epoch table has one row per epoch, which DVC can plot.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nectargan_core.files import atomic_path, naming, own_copy
from nectargan_core.losses.weights import weighted
from nectargan_core.metric_names import (
    IMAGES_PER_S,
    LOSS_D,
    LOSS_G,
    LR_D,
    LR_G,
    SECONDS,
    VAL_COLUMNS,
    loss_metric,
    val_metric,
    weight_metric,
    weighted_metric,
)
from nectargan_core.settings import LOSS_NAMES

if TYPE_CHECKING:
    from nectargan_core.training.step import Losses

LOSS_LOG_COLUMNS = ("epoch", "iteration", "loss", "value", "weight", "weighted")
EPOCH_COLUMNS = (
    "epoch",
    *(metric.column for metric in (SECONDS, IMAGES_PER_S, LR_G, LR_D, LOSS_D, LOSS_G)),
    *(loss_metric(name).column for name in LOSS_NAMES),
    *(weighted_metric(name).column for name in LOSS_NAMES),
    *(weight_metric(name).column for name in LOSS_NAMES),
    *(val_metric(name).column for name in VAL_COLUMNS),
)


def _append(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), own_copy(path).open("a", newline="") as handle:  # a full disk names no file
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        writer.writerows(rows)


def truncate_after(path: Path, epoch: int) -> None:
    """Drop rows of epochs after ``epoch`` (a continued run replaces them), and torn rows of a killed run.

    One rewrite at the start of a continued run, through a temp file so a crash keeps the old file.
    """
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header = rows[0]
    kept = [header] + [row for row in rows[1:] if len(row) == len(header) and row[0].isdigit() and int(row[0]) <= epoch]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        csv.writer(handle).writerows(kept)


@dataclass
class LossLog:
    """Caches per-iteration loss rows in memory and appends them to ``path`` on ``flush``."""

    path: Path
    _pending: list[tuple[object, ...]] = field(default_factory=list)

    def add_epoch(self, epoch: int, steps: Sequence[Losses], weights: Mapping[str, float]) -> None:
        """``steps[i]`` are the (unweighted) losses of iteration ``i + 1``; D and G carry weight 1."""
        for iteration, losses in enumerate(steps, start=1):
            for name, value in losses.items():
                weight = weights.get(name, 1.0)
                self._pending.append((epoch, iteration, name, value, weight, weighted(value, weight)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if self._pending:
            _append(self.path, LOSS_LOG_COLUMNS, self._pending)
            self._pending.clear()


def append_epoch_row(path: Path, row: dict[str, object]) -> None:
    """One row of the epoch table; losses that did not run that epoch stay empty."""
    _append(path, EPOCH_COLUMNS, [[row.get(column, "") for column in EPOCH_COLUMNS]])
