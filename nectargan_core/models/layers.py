"""Small building blocks shared by the generator and the discriminator."""

from __future__ import annotations

from torch import nn

from nectargan_core.settings import Norm


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """Instance norm has no affine parameters (as pix2pix); 'none' is an identity."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix init: conv weights ~ N(0, std), biases 0; batch-norm scale ~ N(1, std)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
