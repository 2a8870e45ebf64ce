"""Image quality metrics per image, shared by per-epoch validation and the evaluate stage."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nectargan_core.losses.pixel import laplacian_loss, sobel_loss

METRICS = ("l1", "l2", "psnr", "ssim", "sobel", "laplacian")
HIGHER_IS_BETTER = {"l1": False, "l2": False, "psnr": True, "ssim": True, "sobel": False, "laplacian": False}


def per_image_metrics(
    fake: torch.Tensor, real: torch.Tensor, names: tuple[str, ...] = METRICS
) -> dict[str, torch.Tensor]:
    """Each of ``names`` per image of a batch in [-1, 1]; PSNR and SSIM on [0, 1] (data range 1)."""
    fake01, real01 = (fake.float() + 1) / 2, (real.float() + 1) / 2
    compute = {
        "l1": lambda: (fake - real).abs().mean(dim=(1, 2, 3)),
        "l2": lambda: (fake - real).square().mean(dim=(1, 2, 3)),
        "psnr": lambda: peak_signal_noise_ratio(fake01, real01, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": lambda: structural_similarity_index_measure(fake01, real01, data_range=1.0, reduction="none"),
        "sobel": lambda: torch.stack([sobel_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
        "laplacian": lambda: torch.stack([laplacian_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
    }
    return {name: compute[name]() for name in names}
