"""A trained generator back from its checkpoint, with the settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.models import ModelInfo, build_generator
from nectargan_core.models.generator import UNetGenerator
from nectargan_core.settings import Settings


@dataclass(frozen=True)
class TrainedGenerator:
    """A generator in eval mode, the settings of its run and the epoch of its checkpoint."""

    generator: UNetGenerator
    settings: Settings
    epoch: int

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.of(self.settings)


def load_generator(path: Path, device: torch.device) -> TrainedGenerator:
    """The generator of a checkpoint in eval mode, built from the checkpoint's own settings."""
    state = load_checkpoint(path)
    settings = Settings.model_validate(state["settings"])
    generator = build_generator(settings)
    generator.load_state_dict(state["generator"])
    return TrainedGenerator(generator.to(device).eval(), settings, int(state["epoch"]))
