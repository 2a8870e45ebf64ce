"""Example strips: input | generated | target for fixed validation samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """C x H x W in [-1, 1] -> H x W x 3 uint8 (grey images are repeated to RGB)."""
    image = image.detach().float().cpu().clamp(-1, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_strips(
    inputs: torch.Tensor, generated: torch.Tensor, targets: torch.Tensor, folder: Path, epoch: int
) -> list[Path]:
    """One PNG per sample, named by epoch and sample index."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (x, fake, y) in enumerate(zip(inputs, generated, targets, strict=True)):
        strip = np.concatenate([to_uint8_rgb(x), to_uint8_rgb(fake), to_uint8_rgb(y)], axis=1)
        path = folder / f"epoch_{epoch:04d}_sample_{index:02d}.png"
        Image.fromarray(strip).save(path)
        paths.append(path)
    return paths
