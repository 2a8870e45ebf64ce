"""Image quality metrics per image, shared by per-epoch validation and the evaluate stage."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nectargan_core.losses.pixel import laplacian_loss, sobel_loss

METRICS = ("l1", "l2", "psnr", "ssim", "sobel", "laplacian")
HIGHER_IS_BETTER = {
    "l1": False,
    "l2": False,
    "psnr": True,
    "ssim": True,
    "sobel": False,
    "laplacian": False,
    "lpips": False,
}

LPIPS_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet ImageNet weights


def weights_file(configured: Path | None, file_name: str) -> Path | None:
    """The configured file, else ``file_name`` in the torch hub cache, else None: never a download."""
    if configured is not None:
        return Path(configured) if Path(configured).is_file() else None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    return cached if cached.is_file() else None


class Lpips:
    """LPIPS (AlexNet) per image; the backbone is read from a local file through a private hub folder."""

    def __init__(self, backbone: Path, device: torch.device) -> None:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        previous = os.environ.get("TORCH_HOME")
        with tempfile.TemporaryDirectory() as home:
            (Path(home) / "hub" / "checkpoints").mkdir(parents=True)
            (Path(home) / "hub" / "checkpoints" / LPIPS_FILE).symlink_to(backbone.resolve())
            os.environ["TORCH_HOME"] = home  # torchvision finds the backbone here; the global hub dir stays
            try:
                self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex").to(device).eval()
            finally:
                if previous is None:
                    del os.environ["TORCH_HOME"]
                else:
                    os.environ["TORCH_HOME"] = previous

    def __call__(self, fake: torch.Tensor, real: torch.Tensor) -> list[float]:
        return [float(self.metric(f[None].float(), r[None].float())) for f, r in zip(fake, real, strict=True)]


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
