"""Generator and discriminator networks built from the typed settings, and what a caller must feed them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from nectargan_core.models.discriminator import PatchDiscriminator
from nectargan_core.models.generator import UNetGenerator
from nectargan_core.models.layers import count_parameters
from nectargan_core.settings import DataSettings, Settings


@dataclass(frozen=True)
class ModelInfo:
    """A trained generator's input facts: its channels, the crop it was trained on and the multiple
    every input side must be. The ONNX and MLflow models carry them as metadata."""

    input_channels: int
    output_channels: int
    crop_size: int
    side_multiple: int

    @classmethod
    def of(cls, settings: Settings) -> ModelInfo:
        data = settings.data
        return cls(data.input_channels, data.output_channels, data.crop_size, settings.model.generator.side_multiple)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, int]) -> ModelInfo:
        return cls(meta["input_channels"], meta["output_channels"], meta["crop_size"], meta["side_multiple"])

    def metadata(self, epoch: int) -> dict[str, int]:
        """The facts and the epoch of the weights, as the exported models store them."""
        return {**asdict(self), "epoch": epoch}

    def data(self, data: DataSettings) -> DataSettings:
        """``data`` with the channels and crop the generator was trained on (the rest as configured)."""
        trained = {"input_channels": self.input_channels, "output_channels": self.output_channels}
        return DataSettings.model_validate({**data.model_dump(), **trained, "crop_size": self.crop_size})


def build_generator(settings: Settings) -> UNetGenerator:
    return UNetGenerator(settings.data.input_channels, settings.data.output_channels, settings.model.generator)


def build_discriminator(settings: Settings) -> PatchDiscriminator:
    channels = settings.data.input_channels + settings.data.output_channels
    return PatchDiscriminator(channels, settings.model.discriminator)


__all__ = [
    "ModelInfo",
    "PatchDiscriminator",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
]
