"""The trainer's MLflow hook: per-epoch metrics, example strips as step images, checkpoints as artifacts."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric
from PIL import Image

from nectargan_core.metric_names import LOSS_D
from nectargan_core.tracking.tracker import SNAPSHOTS_ARTIFACT, Tracker, example_image_key
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback

EPOCH_MARKER = LOSS_D.key  # logged for every epoch: its history says which epochs a run holds


class MLflowCallback(TrainingCallback):
    """Per epoch (step = epoch): each loss unweighted and weighted, each weight, LRs, time, images/s;
    example strips as step images; every snapshot as an artifact when asked (log_checkpoints: all).

    A reopened run (a continue after a kill) already holds the epochs it logged before it died.
    The continue replays them bit for bit from the last checkpoint, so they are not logged twice:
    one training keeps one metric history with one value per epoch.
    """

    def __init__(self, tracker: Tracker, run_id: str, log_checkpoints: str) -> None:
        self.client = tracker.client
        self.run_id = run_id
        self.log_checkpoints = log_checkpoints
        self.logged_through = 0

    def on_train_start(self, start_epoch: int, total_epochs: int, changed: list[str]) -> None:
        history = self.client.get_metric_history(self.run_id, EPOCH_MARKER)
        self.logged_through = max((metric.step for metric in history), default=0)

    def on_epoch_end(self, summary: EpochSummary) -> None:
        if summary.epoch <= self.logged_through:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name.key, float(value), now, summary.epoch) for name, value in summary.metrics().items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_examples(self, epoch: int, paths: list[Path]) -> None:
        if epoch <= self.logged_through:
            return
        for index, path in enumerate(paths):
            with Image.open(path) as image:
                self.client.log_image(self.run_id, image.copy(), key=example_image_key(index), step=epoch)

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path) -> None:
        if self.log_checkpoints == "all":  # the final full state is logged with the registered model
            self.client.log_artifact(self.run_id, str(snapshot), SNAPSHOTS_ARTIFACT)
