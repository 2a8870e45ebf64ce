"""Evaluate a checkpoint on the test split (val when there is none): per-image metrics and means."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nectargan_core.data.dataset import PairedImageDataset, list_pairs
from nectargan_core.data.transforms import PairTransform
from nectargan_core.losses.pixel import laplacian_loss, sobel_loss
from nectargan_core.settings import Settings
from nectargan_core.training.checkpoint import data_for_checkpoint, load_generator
from nectargan_core.training.step import resolve_device

METRICS = ("l1", "l2", "psnr", "ssim", "sobel", "laplacian")


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    epoch: int
    metrics: dict[str, float]  # means over the split
    table: Path
    metrics_file: Path


def evaluation_split(settings: Settings) -> str:
    root = Path(settings.data.root)
    return "test" if (root / "test").is_dir() and list_pairs(root, "test", settings.data.layout) else "val"


def per_image_metrics(fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric per image of a batch in [-1, 1]; PSNR and SSIM on [0, 1] (data range 1)."""
    fake01, real01 = (fake.float() + 1) / 2, (real.float() + 1) / 2
    return {
        "l1": (fake - real).abs().mean(dim=(1, 2, 3)),
        "l2": (fake - real).square().mean(dim=(1, 2, 3)),
        "psnr": peak_signal_noise_ratio(fake01, real01, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(fake01, real01, data_range=1.0, reduction="none"),
        "sobel": torch.stack([sobel_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
        "laplacian": torch.stack([laplacian_loss(f[None], r[None]) for f, r in zip(fake, real, strict=True)]),
    }


@torch.no_grad()
def evaluate_checkpoint(settings: Settings, checkpoint: Path, out_dir: Path, batch_size: int = 8) -> EvaluationResult:
    """Write ``per_image.csv`` (one row per image) and ``metrics.json`` (the means) into ``out_dir``."""
    device = resolve_device(settings.train)
    generator, trained, epoch = load_generator(checkpoint, device)
    data = data_for_checkpoint(settings.data, trained)
    split = evaluation_split(settings)
    dataset = PairedImageDataset(data, split, PairTransform(data, train=False))
    rows: list[dict[str, object]] = []
    for start, (x, y) in zip(
        range(0, len(dataset), batch_size), DataLoader(dataset, batch_size=batch_size), strict=True
    ):
        fake = generator(x.to(device))
        values = {k: v.cpu().tolist() for k, v in per_image_metrics(fake, y.to(device)).items()}
        for offset in range(x.shape[0]):
            rows.append({"file": dataset.pairs[start + offset].name, **{k: values[k][offset] for k in METRICS}})
    means = {k: sum(float(r[k]) for r in rows) / len(rows) for k in METRICS}

    out_dir.mkdir(parents=True, exist_ok=True)
    table, metrics_file = out_dir / "per_image.csv", out_dir / "metrics.json"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    metrics_file.write_text(json.dumps({"split": split, "images": len(rows), "epoch": epoch, **means}, indent=2) + "\n")
    return EvaluationResult(split, epoch, means, table, metrics_file)
