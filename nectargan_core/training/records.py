"""Append-only records of a run: the per-iteration loss log and the per-epoch table.

Both are CSV files with a fixed header, so appending is O(new rows) and a continued run can add
to them even when it activates other losses. The loss log is long-format (one row per loss per
iteration); the epoch table has one row per epoch, which DVC can plot.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nectargan_core.files import atomic_path, own_copy
from nectargan_core.settings import LOSS_NAMES
from nectargan_core.training.validation import VAL_COLUMNS, val_column

if TYPE_CHECKING:
    from nectargan_core.training.step import Losses

LOSS_LOG_COLUMNS = ("epoch", "iteration", "loss", "value", "weight", "weighted")
EPOCH_COLUMNS = (
    "epoch",
    "seconds",
    "images_per_s",
    "lr_g",
    "lr_d",
    "loss_d",
    "loss_g",
    *LOSS_NAMES,
    *(f"{name}_weighted" for name in LOSS_NAMES),
    *(f"{name}_weight" for name in LOSS_NAMES),
    *(val_column(name) for name in VAL_COLUMNS),
)


def _widen(path: Path, columns: Sequence[str]) -> None:
    """A table written before some columns existed gets them (empty) once, through a temp file."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] == list(columns) or not set(rows[0]) <= set(columns):
        return
    old = rows[0]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows[1:]:
            by_name = dict(zip(old, row, strict=False))
            writer.writerow([by_name.get(column, "") for column in columns])


def _append(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _widen(path, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with own_copy(path).open("a", newline="") as handle:
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
                self._pending.append((epoch, iteration, name, value, weight, value * weight))

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


def registered_versions(summary: Path) -> dict[int, str]:
    """{epoch: model version} a run's summary records as registered ({} when none, or unreadable).

    Summaries written before ``registered_epoch`` existed registered their ``last_epoch``.
    """
    try:
        recorded = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    version = recorded.get("model_version")
    epoch = recorded.get("registered_epoch", recorded.get("last_epoch"))
    return {epoch: version} if epoch is not None and version else {}
