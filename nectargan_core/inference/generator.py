"""A trained generator back from its checkpoint, with the settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.models import build_generator
from nectargan_core.models.generator import UNetGenerator
from nectargan_core.settings import DataSettings, Settings


@dataclass(frozen=True)
class TrainedGenerator:
    """A generator in eval mode, the settings of its run and the epoch of its checkpoint."""

    generator: UNetGenerator
    settings: Settings
    epoch: int

    @property
    def side_multiple(self) -> int:
        """Every input side must be a multiple of this: 2^(n_downs + 2)."""
        return 2 ** (self.settings.model.generator.n_downs + 2)

    def data(self, data: DataSettings) -> DataSettings:
        """``data`` with the channels and crop the generator was trained on (the rest as configured)."""
        trained = self.settings.data
        kept = {key: getattr(trained, key) for key in ("input_channels", "output_channels", "crop_size")}
        return DataSettings.model_validate({**data.model_dump(), **kept})


def load_generator(path: Path, device: torch.device) -> TrainedGenerator:
    """The generator of a checkpoint in eval mode, built from the checkpoint's own settings."""
    state = load_checkpoint(path)
    settings = Settings.model_validate(state["settings"])
    generator = build_generator(settings)
    generator.load_state_dict(state["generator"])
    return TrainedGenerator(generator.to(device).eval(), settings, int(state["epoch"]))
