"""Image quality metrics per image, shared by per-epoch validation and the evaluate stage."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

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


SSIM_SIGMA, SSIM_KERNEL, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03  # Wang et al. 2004, as torchmetrics


def psnr(fake01: torch.Tensor, real01: torch.Tensor) -> torch.Tensor:
    """Per image, data range 1: 10 log10(1 / MSE), in natural logs as torchmetrics computes it."""
    mse = (fake01 - real01).square().sum(dim=(1, 2, 3)) / fake01[0].numel()
    return -torch.log(mse) * (10 / torch.log(torch.tensor(10.0)))


def ssim(fake01: torch.Tensor, real01: torch.Tensor) -> torch.Tensor:
    """Per image, data range 1: the mean SSIM map of an 11 x 11 Gaussian window (sigma 1.5) over the
    reflect-padded images, one value per pixel (the numbers of torchmetrics' SSIM, whose package costs
    ~2.5 s of import in every training process)."""
    channels, pad = fake01.shape[1], SSIM_KERNEL // 2
    offsets = torch.arange(SSIM_KERNEL, dtype=fake01.dtype, device=fake01.device) - pad
    gauss = torch.exp(-((offsets / SSIM_SIGMA) ** 2) / 2)
    gauss = gauss / gauss.sum()
    window = torch.outer(gauss, gauss).expand(channels, 1, SSIM_KERNEL, SSIM_KERNEL)
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (fake01, real01))
    means = F.conv2d(torch.cat((x, y, x * x, y * y, x * y)), window, groups=channels).split(len(x))
    mu_x, mu_y, xx, yy, xy = means
    var_x, var_y = (xx - mu_x.square()).clamp(min=0), (yy - mu_y.square()).clamp(min=0)
    cov = xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    full = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return full.reshape(len(x), -1).mean(dim=1)


def per_image_metrics(
    fake: torch.Tensor, real: torch.Tensor, names: tuple[str, ...] = METRICS
) -> dict[str, torch.Tensor]:
    """Each of ``names`` per image of a batch in [-1, 1]; PSNR and SSIM on [0, 1] (data range 1)."""
    fake01, real01 = (fake.float() + 1) / 2, (real.float() + 1) / 2
    compute = {
        "l1": lambda: (fake - real).abs().mean(dim=(1, 2, 3)),
        "l2": lambda: (fake - real).square().mean(dim=(1, 2, 3)),
        "psnr": lambda: psnr(fake01, real01),
        "ssim": lambda: ssim(fake01, real01),
        "sobel": lambda: torch.stack([sobel_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
        "laplacian": lambda: torch.stack([laplacian_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
    }
    return {name: compute[name]() for name in names}
