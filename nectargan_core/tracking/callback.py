"""The trainer's MLflow hook: per-epoch metrics, example strips as step images, checkpoints as artifacts."""

from __future__ import annotations

from pathlib import Path

from nectargan_core.metric_names import LOSS_D
from nectargan_core.tracking.journal import Journal, now_ms
from nectargan_core.tracking.tracker import SNAPSHOTS_ARTIFACT, example_image_key, unreachable
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback

EPOCH_MARKER = LOSS_D.key  # logged for every epoch: its history says which epochs a run holds


class MLflowCallback(TrainingCallback):
    """Per epoch (step = epoch): each loss unweighted and weighted, each weight, LRs, time, images/s;
    example strips as step images; every snapshot as an artifact when asked (log_checkpoints: all).

    A reopened run (a continue after a kill) already holds the epochs it logged before it died.
    The continue replays them bit for bit from the last checkpoint, so they are not logged twice:
    one training keeps one metric history with one value per epoch. While the server is away, each
    epoch's records go to the run's journal (one attempt per epoch), and are sent when it is back.
    """

    def __init__(self, journal: Journal, run_id: str, log_checkpoints: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.log_checkpoints = log_checkpoints
        self.logged_through = 0

    def on_train_start(self, start_epoch: int, total_epochs: int, changed: list[str]) -> None:
        self.journal.flush()  # records a killed run kept: their epochs count as logged
        kept = [r["step"] for r in self.journal.pending() if r["kind"] == "metrics" and r["run"] == self.run_id]
        try:
            history = self.journal.tracker.client.get_metric_history(self.run_id, EPOCH_MARKER)
        except Exception as exc:
            if not unreachable(exc):
                raise
            history = []
        self.logged_through = max([metric.step for metric in history] + kept, default=0)

    def on_epoch_end(self, summary: EpochSummary) -> None:
        self.journal.try_again()  # one attempt per epoch while the server is away
        if summary.epoch <= self.logged_through:
            return
        values = {name.key: float(value) for name, value in summary.metrics().items()}
        self.journal.send(
            {"kind": "metrics", "run": self.run_id, "step": summary.epoch, "timestamp": now_ms(), "values": values}
        )

    def on_examples(self, epoch: int, paths: list[Path]) -> None:
        if epoch <= self.logged_through:
            return
        for index, path in enumerate(paths):
            key = example_image_key(index)
            self.journal.send({"kind": "image", "run": self.run_id, "key": key, "step": epoch, "file": str(path)})

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path) -> None:
        if self.log_checkpoints == "all":  # the final full state is logged with the registered model
            record = {"kind": "artifact", "run": self.run_id, "file": str(snapshot), "folder": SNAPSHOTS_ARTIFACT}
            self.journal.send(record)
