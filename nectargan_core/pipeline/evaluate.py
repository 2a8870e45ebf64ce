"""Evaluate a checkpoint on the test split (val when there is none): per-image metrics and means."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nectargan_core.data.dataset import PairedImageDataset, list_pairs
from nectargan_core.data.transforms import PairTransform
from nectargan_core.losses.pixel import laplacian_loss, sobel_loss
from nectargan_core.settings import Settings
from nectargan_core.training.checkpoint import data_for_checkpoint, load_generator
from nectargan_core.training.examples import to_uint8_rgb
from nectargan_core.training.step import resolve_device

METRICS = ("l1", "l2", "psnr", "ssim", "sobel", "laplacian")


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    epoch: int
    metrics: dict[str, float]  # means over the split
    table: Path
    metrics_file: Path
    report: Path
    notices: tuple[str, ...] = ()


def lpips_backbone() -> Path | None:
    """LPIPS (AlexNet) needs torchvision's ImageNet AlexNet weights in the torch hub cache; never downloaded."""
    from torchvision.models import AlexNet_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    return cached if cached.is_file() else None


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
def evaluate_checkpoint(
    settings: Settings, checkpoint: Path, out_dir: Path, batch_size: int = 8, samples: int = 3
) -> EvaluationResult:
    """Write ``per_image.csv``, ``metrics.json`` (the means) and ``report.md`` with the best and worst
    ``samples`` images by L1 and by SSIM (strips in ``samples/``) into ``out_dir``."""
    device = resolve_device(settings.train)
    generator, trained, epoch = load_generator(checkpoint, device)
    data = data_for_checkpoint(settings.data, trained)
    split = evaluation_split(settings)
    dataset = PairedImageDataset(data, split, PairTransform(data, train=False))

    notices = ["FID skipped: it needs the torch-fidelity package and its Inception weights locally (no download)."]
    lpips = None
    if lpips_backbone() is None:
        notices.append(
            f"LPIPS skipped: no AlexNet ImageNet weights in {Path(torch.hub.get_dir()) / 'checkpoints'} (no download)."
        )
    else:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex").to(device).eval()
    names = [*METRICS, "lpips"] if lpips is not None else list(METRICS)

    rows: list[dict[str, object]] = []
    loader = DataLoader(dataset, batch_size=batch_size)
    for start, (x, y) in zip(range(0, len(dataset), batch_size), loader, strict=True):
        fake, real = generator(x.to(device)), y.to(device)
        values = {k: v.cpu().tolist() for k, v in per_image_metrics(fake, real).items()}
        if lpips is not None:
            values["lpips"] = [float(lpips(f[None].float(), r[None].float())) for f, r in zip(fake, real, strict=True)]
        for offset in range(x.shape[0]):
            rows.append({"file": dataset.pairs[start + offset].name, **{k: values[k][offset] for k in names}})
    means = {k: sum(float(r[k]) for r in rows) / len(rows) for k in names}

    out_dir.mkdir(parents=True, exist_ok=True)
    table, metrics_file = out_dir / "per_image.csv", out_dir / "metrics.json"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", *names])
        writer.writeheader()
        writer.writerows(rows)
    metrics_file.write_text(json.dumps({"split": split, "images": len(rows), "epoch": epoch, **means}, indent=2) + "\n")
    report = _write_report(out_dir, generator, dataset, rows, means, samples, split, epoch, notices)
    return EvaluationResult(split, epoch, means, table, metrics_file, report, tuple(notices))


def _write_report(
    out_dir: Path,
    generator: torch.nn.Module,
    dataset: PairedImageDataset,
    rows: list[dict[str, object]],
    means: dict[str, float],
    samples: int,
    split: str,
    epoch: int,
    notices: list[str],
) -> Path:
    """Markdown: the metric table, then the best/worst samples by L1 and SSIM as strips."""
    strips_dir = out_dir / "samples"
    shutil.rmtree(strips_dir, ignore_errors=True)
    device = next(generator.parameters()).device
    by_l1 = sorted(range(len(rows)), key=lambda i: float(rows[i]["l1"]))
    by_ssim = sorted(range(len(rows)), key=lambda i: -float(rows[i]["ssim"]))
    k = min(samples, len(rows))
    groups = {
        ("best_l1", "Best by L1"): by_l1[:k],
        ("worst_l1", "Worst by L1"): by_l1[::-1][:k],
        ("best_ssim", "Best by SSIM"): by_ssim[:k],
        ("worst_ssim", "Worst by SSIM"): by_ssim[::-1][:k],
    }
    lines = [
        f"# Evaluation of epoch {epoch} on {split} ({len(rows)} images)",
        "",
        "| metric | mean |",
        "|---|---:|",
        *(f"| {name} | {value:.4f} |" for name, value in means.items()),
        "",
        *(f"> {notice}" for notice in notices),
        "",
        "Strips are input | generated | target.",
    ]
    for (group, title), indices in groups.items():
        lines += ["", f"## {title}", ""]
        for rank, index in enumerate(indices, start=1):
            x, y = dataset[index]
            fake = generator(x[None].to(device))[0]
            strip = np.concatenate([to_uint8_rgb(x), to_uint8_rgb(fake), to_uint8_rgb(y)], axis=1)
            name = f"{group}_{rank:02d}_{Path(str(rows[index]['file'])).stem}.png"
            strips_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip).save(strips_dir / name)
            row = rows[index]
            lines.append(
                f"{rank}. `{row['file']}`: L1 {float(row['l1']):.4f}, SSIM {float(row['ssim']):.4f}, "
                f"PSNR {float(row['psnr']):.2f}  \n   ![{name}](samples/{name})"
            )
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
