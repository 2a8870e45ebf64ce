"""Test settings: the project's own params.yaml with a few overrides, small enough for CPU tests
(32 px crops, 8-feature networks, 3 steps per epoch on the 6-image train split of ``sample_root``)."""

from pathlib import Path
from typing import Any

from nectargan_core.settings import Settings, load_settings, with_changes

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
