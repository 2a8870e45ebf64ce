"""Per-epoch validation: G on the val split with fixed crops, the numbers that compare across runs.

The training losses are scaled by the very loss weights a study compares; L1, PSNR and SSIM of
G's output against the target on the same val pairs are not. LPIPS is added when its AlexNet weights
are local (``evaluate.lpips_weights`` or the torch hub cache; nothing is downloaded). The pairs go
through the eval transform (no random crop or flip) once and stay in memory, so every epoch and every run of a
study is measured on the same pixels. Validation draws no random numbers, so it changes nothing
of the training that follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nectargan_core.data.dataset import first_val_pairs
from nectargan_core.losses.metrics import LPIPS_FILE, Lpips, per_image_metrics, weights_file
from nectargan_core.metric_names import VAL_METRICS
from nectargan_core.settings import Settings

VAL_BATCH = 8


@dataclass(frozen=True)
class ValidationPairs:
    inputs: torch.Tensor
    targets: torch.Tensor
    lpips: Lpips | None = None

    @classmethod
    def load(cls, settings: Settings, device: torch.device) -> ValidationPairs:
        inputs, targets = first_val_pairs(settings.data)
        backbone = weights_file(settings.evaluate.lpips_weights, LPIPS_FILE)
        lpips = Lpips(backbone, device) if backbone is not None else None
        return cls(inputs, targets, lpips)


@torch.no_grad()
def validate(generator: torch.nn.Module, pairs: ValidationPairs, device: torch.device, autocast) -> dict[str, float]:
    """Mean L1, PSNR and SSIM of ``generator`` (in eval mode) over the pairs; it is left in train mode."""
    sums = dict.fromkeys((*VAL_METRICS, "lpips") if pairs.lpips else VAL_METRICS, 0.0)
    generator.eval()
    try:
        for start in range(0, len(pairs.inputs), VAL_BATCH):
            x = pairs.inputs[start : start + VAL_BATCH].to(device, non_blocking=True)
            y = pairs.targets[start : start + VAL_BATCH].to(device, non_blocking=True)
            with autocast():
                fake = generator(x)
            fake = fake.float().clamp(-1, 1)
            for name, values in per_image_metrics(fake, y.float(), VAL_METRICS).items():
                sums[name] += float(values.sum())
            if pairs.lpips is not None:
                sums["lpips"] += sum(pairs.lpips(fake, y))
    finally:
        generator.train()
    return {name: total / len(pairs.inputs) for name, total in sums.items()}
