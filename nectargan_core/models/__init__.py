"""Generator and discriminator networks built from the typed settings."""

from nectargan_core.models.discriminator import PatchDiscriminator
from nectargan_core.models.generator import UNetGenerator
from nectargan_core.models.layers import count_parameters
from nectargan_core.settings import Settings


def build_generator(settings: Settings) -> UNetGenerator:
    return UNetGenerator(settings.data.input_channels, settings.data.output_channels, settings.model.generator)


def build_discriminator(settings: Settings) -> PatchDiscriminator:
    channels = settings.data.input_channels + settings.data.output_channels
    return PatchDiscriminator(channels, settings.model.discriminator)


__all__ = ["PatchDiscriminator", "UNetGenerator", "build_discriminator", "build_generator", "count_parameters"]
