"""What several test modules share (test modules never import each other).

Test settings: the project's own params.yaml with a few overrides, small enough for CPU tests
(32 px crops, 8-feature networks, 3 steps per epoch on the 6-image train split of ``sample_root``);
readers of a run folder's epoch table; a callback that cuts a run after a checkpoint; a 16-bit PNG
writer (PIL writes only 16-bit grey)."""

import csv
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nectargan_core.settings import Settings, load_settings, with_changes
from nectargan_core.training.callbacks import TrainingCallback

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

TINY: dict[str, Any] = {
    "seed": 7,
    "data.load_size": 36,
    "data.crop_size": 32,
    "data.batch_size": 2,
    "model.generator.features": 8,
    "model.generator.n_downs": 1,
    "model.generator.dropout_blocks": 2,
    "model.discriminator.features": 8,
    "train.generator.epochs": 2,
    "train.generator.epochs_decay": 0,
    "train.checkpoint_every": 1,
    "train.keep_checkpoints": 10,
    "train.num_examples": 2,
    "train.device": "cpu",
    "logging.progress_every": 2,
    "tracking.system_metrics": False,
}


def project_settings(changes: dict[str, Any] | None = None) -> Settings:
    """params.yaml with the tiny sizes and ``{"dotted.key": value}`` changes, validated like the file."""
    return with_changes(load_settings(PARAMS), {**TINY, **(changes or {})}, "tiny test settings")


def tiny_settings(root: Path, output_dir: Path | None = None, **train: object) -> Settings:
    """``train`` changes keys of the train group; dotted keys reach into it (``generator.epochs=3``)."""
    changes: dict[str, Any] = {"data.root": str(root)}
    if output_dir is not None:
        changes["train.output_dir"] = str(output_dir)
    return project_settings(changes | {f"train.{key}": value for key, value in train.items()})


LOSS_COLUMNS = ("loss_d", "loss_g", "gan", "l1", "sobel")


def epoch_rows(out: Path) -> list[dict[str, str]]:
    """The rows of a run folder's epochs.csv, as the CSV holds them (strings)."""
    with (out / "epochs.csv").open() as handle:
        return list(csv.DictReader(handle))


def losses(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The loss columns of ``epoch_rows``: equal exactly when two runs trained bit for bit alike."""
    return [{k: row[k] for k in LOSS_COLUMNS} for row in rows]


class StopAfter(TrainingCallback):
    """Ctrl+C right after epoch ``epoch``'s checkpoint: a run cut where a continue must pick it up."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path | None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG of an H x W x C array (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), big-endian samples."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
