"""The generator's weighted objective: only terms with a positive weight are computed."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nectargan_core.losses.gan import generator_adversarial_loss
from nectargan_core.losses.perceptual import VGGPerceptualLoss
from nectargan_core.losses.pixel import l1_loss, l2_loss, laplacian_loss, sobel_loss
from nectargan_core.losses.weights import weighted
from nectargan_core.settings import LossSettings

_PIXEL_TERMS = {"l1": l1_loss, "l2": l2_loss, "sobel": sobel_loss, "laplacian": laplacian_loss}


class GeneratorObjective(nn.Module):
    def __init__(self, cfg: LossSettings, vgg: VGGPerceptualLoss | None = None) -> None:
        """``vgg`` is required when the VGG term can be active (see ``ever_active``)."""
        super().__init__()
        self.gan_mode = cfg.gan_mode
        self.vgg = vgg

    def forward(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        weights: Mapping[str, float],
        fake_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted loss and each active term unweighted (tensors, still on the device)."""
        terms: dict[str, torch.Tensor] = {}
        if weights["gan"] > 0:
            if fake_logits is None:
                raise ValueError("the GAN term is active: pass D(x, G(x)) as fake_logits")
            terms["gan"] = generator_adversarial_loss(fake_logits, self.gan_mode)
        for name, fn in _PIXEL_TERMS.items():
            if weights[name] > 0:
                terms[name] = fn(fake, real)
        if weights["vgg"] > 0:
            if self.vgg is None:
                raise ValueError("the VGG term is active but no VGG network was built")
            terms["vgg"] = self.vgg(fake, real)
        total = sum((weighted(value, weights[name]) for name, value in terms.items()), fake.new_zeros(()))
        return total, terms
