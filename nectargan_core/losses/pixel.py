"""Pixel and edge losses between a generated image and its target (both N x C x H x W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (fake - real).abs().mean()


def l2_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (fake - real).square().mean()


def _filter_grey(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Channel-mean grey image cross-correlated with a 3x3 kernel, zero padding 1 (in fp32, also under autocast)."""
    grey = image.float().mean(dim=1, keepdim=True)
    weight = kernel.to(device=image.device).view(1, 1, 3, 3)
    return F.conv2d(grey, weight, padding=1)


def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    gx = _filter_grey(image, _SOBEL_X)
    gy = _filter_grey(image, _SOBEL_Y)
    return torch.sqrt(gx.square() + gy.square() + 1e-6)


def sobel_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between Sobel gradient magnitudes: penalises misplaced or missing edges."""
    return (sobel_magnitude(fake) - sobel_magnitude(real)).abs().mean()


def laplacian_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between signed Laplacian responses: penalises differences in fine detail."""
    return (_filter_grey(fake, _LAPLACIAN) - _filter_grey(real, _LAPLACIAN)).abs().mean()
