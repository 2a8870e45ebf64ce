"""UNet generator (pix2pix ``unet_256`` at the defaults), with plain or residual blocks.

Depth: a first stride-2 layer, ``n_downs`` further stride-2 layers, then a stride-2 bottleneck,
so the input side must be a multiple of ``2 ** (n_downs + 2)`` (256 at the default, where the
bottleneck is 1x1). Convolutions that feed a normalisation layer carry no bias (it would cancel);
the bilinear variant's 3x3 convolutions keep theirs (this gives the reference parameter counts,
54,404,675 and 39,150,979).
"""

from __future__ import annotations

import torch
from torch import nn

from nectargan_core.models.layers import init_weights, norm_layer
from nectargan_core.settings import GeneratorSettings, Norm


class ResidualUnit(nn.Module):
    """x + F(x) with two 3x3 convolutions at constant size: refines a level without resampling."""

    def __init__(self, channels: int, norm: Norm, activation: nn.Module) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            norm_layer(norm, channels),
            activation,
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _upsampler(kind: str, in_ch: int, out_ch: int, bias: bool) -> nn.Module:
    if kind == "transposed":
        return nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=bias)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
    )


class UNetGenerator(nn.Module):
    """Encoder-decoder with skip concatenation; Tanh output in [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, cfg: GeneratorSettings) -> None:
        super().__init__()
        self.depth = cfg.n_downs + 2
        ch = [cfg.features * min(2**i, cfg.channel_cap) for i in range(self.depth)]
        has_norm = cfg.norm != "none"
        residual = cfg.block == "residual"

        downs: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 4, stride=2, padding=1)]
        for i in range(1, self.depth):
            bottleneck = i == self.depth - 1
            layers: list[nn.Module] = [
                nn.LeakyReLU(0.2),
                nn.Conv2d(ch[i - 1], ch[i], 4, stride=2, padding=1, bias=bottleneck or not has_norm),
            ]
            if not bottleneck:  # the bottleneck may be 1x1, where instance norm is undefined
                layers.append(norm_layer(cfg.norm, ch[i]))
                if residual:
                    layers.append(ResidualUnit(ch[i], cfg.norm, nn.LeakyReLU(0.2)))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)

        ups: list[nn.Module] = []
        for i in reversed(range(self.depth)):  # i = level whose output this up block restores
            in_ch = ch[i] if i == self.depth - 1 else 2 * ch[i]
            outermost = i == 0
            out_ch = out_channels if outermost else ch[i - 1]
            layers = [nn.ReLU(), _upsampler(cfg.upsample, in_ch, out_ch, bias=outermost or not has_norm)]
            if outermost:
                layers.append(nn.Tanh())
            else:
                layers.append(norm_layer(cfg.norm, out_ch))
                if residual:
                    layers.append(ResidualUnit(out_ch, cfg.norm, nn.ReLU()))
                if len(ups) < cfg.dropout_blocks and cfg.dropout > 0:
                    layers.append(nn.Dropout(cfg.dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.ups[0](skips.pop())
        for up in self.ups[1:]:
            h = up(torch.cat([h, skips.pop()], dim=1))
        return h
