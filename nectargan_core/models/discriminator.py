"""PatchGAN discriminator on cat(input, image): a map of raw logits, one per receptive patch.

``n_layers`` counts the stride-2 layers after the first one; 3 is the classic 70x70 PatchGAN
(30x30 logits for a 256 input). The reference toolbox counts the first layer too and calls
the same network ``n_layers 4``.
"""

from __future__ import annotations

import torch
from torch import nn

from nectargan_core.models.layers import init_weights, norm_layer
from nectargan_core.settings import DiscriminatorSettings


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, cfg: DiscriminatorSettings) -> None:
        """``in_channels`` is input + target channels (the pair is concatenated)."""
        super().__init__()
        bias = cfg.norm == "none"
        f = cfg.features
        layers: list[nn.Module] = [nn.Conv2d(in_channels, f, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        prev = f
        for n in range(1, cfg.n_layers + 1):
            out = f * min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(prev, out, 4, stride=stride, padding=1, bias=bias),
                norm_layer(cfg.norm, out),
                nn.LeakyReLU(0.2),
            ]
            prev = out
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=1))
