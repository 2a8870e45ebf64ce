"""Adversarial losses on raw PatchGAN logits."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def adversarial_loss(logits: torch.Tensor, real: bool, mode: Literal["vanilla", "lsgan"]) -> torch.Tensor:
    """BCE-with-logits (vanilla) or MSE (lsgan) of every patch logit against 1 (real) or 0 (fake)."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits, target)


def generator_adversarial_loss(fake_logits: torch.Tensor, mode: Literal["vanilla", "lsgan"]) -> torch.Tensor:
    """Non-saturating: G is trained to make D call its output real."""
    return adversarial_loss(fake_logits, True, mode)


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: Literal["vanilla", "lsgan"]
) -> torch.Tensor:
    """0.5 * (loss(D(x, y), real) + loss(D(x, G(x).detach()), fake)): halves D's pace against G."""
    return 0.5 * (adversarial_loss(real_logits, True, mode) + adversarial_loss(fake_logits, False, mode))
