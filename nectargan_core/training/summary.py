"""``summary.json`` of a run folder, typed: what the trainer did and, once the run is tracked, which
MLflow run and registered version it became. One writer (``write``), one reader (``read``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from nectargan_core.files import write_json_atomic


@dataclass(frozen=True)
class RunSummary:
    output_dir: str
    start_epoch: int
    last_epoch: int
    checkpoint: str | None
    device: str
    precision: str
    changed_settings: list[str] = field(default_factory=list)
    final_epoch: dict[str, object] | None = None  # the last epoch's EpochSummary
    selected_epoch: int | None = None  # the best validated epoch (train.select_by), and why
    selected_why: str | None = None
    stopped_early: str | None = None
    # Written by the tracked train stage:
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    registered_epoch: int | None = None
    not_registered: str | None = None  # why a finished run was not registered (it diverged)
    parent_model: str | None = None  # the registered version it continued from
    parent_model_version: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def read(cls, path: Path) -> RunSummary | None:
        """The summary in ``path``, or None when there is none or it is not one."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, dataclasses.asdict(self))

    def with_changes(self, **changes: object) -> RunSummary:
        return dataclasses.replace(self, **changes)

    def registered_versions(self) -> dict[int, str]:
        """{epoch: model version} recorded as registered ({} when none)."""
        if self.registered_epoch is None or not self.model_version:
            return {}
        return {self.registered_epoch: self.model_version}


def registered_versions(path: Path) -> dict[int, str]:
    """{epoch: model version} the summary in ``path`` records as registered ({} when none, or unreadable)."""
    summary = RunSummary.read(path)
    return summary.registered_versions() if summary else {}
