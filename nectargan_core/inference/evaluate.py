"""Evaluate a checkpoint on the test split (val when there is none): per-image metrics and means."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nectargan_core.data.dataset import PairedImageDataset, list_pairs
from nectargan_core.data.transforms import PairTransform
from nectargan_core.device import resolve_device
from nectargan_core.files import atomic_path, compose_strip, save_image_atomic, write_json_atomic, write_text_atomic
from nectargan_core.inference.generator import load_generator
from nectargan_core.layout import EvaluationPaths
from nectargan_core.losses.metrics import LPIPS_FILE, METRICS, Lpips, per_image_metrics, weights_file
from nectargan_core.settings import Settings


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    epoch: int
    metrics: dict[str, float]  # means over the split
    table: Path
    metrics_file: Path
    report: Path
    notices: tuple[str, ...] = ()


FID_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's Inception weights


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    images = images.float().clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return ((images + 1) * 127.5).round().to(torch.uint8)


def evaluation_split(settings: Settings) -> str:
    root = Path(settings.data.root)
    return "test" if (root / "test").is_dir() and list_pairs(root, "test", settings.data.layout) else "val"


@torch.no_grad()
def evaluate_checkpoint(
    settings: Settings, checkpoint: Path, out_dir: Path, batch_size: int = 8, samples: int | None = None
) -> EvaluationResult:
    """Write ``per_image.csv``, ``metrics.json`` (the means) and ``report.md`` with the best and worst
    ``samples`` images by L1 and by SSIM (strips in ``samples/``) into ``out_dir``."""
    device = resolve_device(settings.train)
    trained = load_generator(checkpoint, device)
    generator, epoch = trained.generator, trained.epoch
    data = trained.info.data(settings.data)
    split = evaluation_split(settings)
    dataset = PairedImageDataset(data, split, PairTransform(data, train=False))

    cfg, notices = settings.evaluate, []
    lpips_file = weights_file(cfg.lpips_weights, LPIPS_FILE)
    lpips = Lpips(lpips_file, device) if lpips_file else None
    if lpips is None:
        where = cfg.lpips_weights or Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILE
        notices.append(f"LPIPS skipped: no AlexNet ImageNet weights at {where} (nothing is downloaded).")
    fid_file = weights_file(cfg.fid_weights, FID_FILE)
    fid = None
    if fid_file is None:
        where = cfg.fid_weights or Path(torch.hub.get_dir()) / "checkpoints" / FID_FILE
        notices.append(f"FID skipped: no Inception weights at {where} (nothing is downloaded).")
    elif len(dataset) < 2:
        notices.append("FID skipped: it needs at least 2 images.")
    else:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature_extractor_weights_path=str(fid_file)).to(device)
    names = [*METRICS, "lpips"] if lpips is not None else list(METRICS)

    rows: list[dict[str, object]] = []
    loader = DataLoader(dataset, batch_size=batch_size)
    for start, (x, y) in zip(range(0, len(dataset), batch_size), loader, strict=True):
        fake, real = generator(x.to(device)), y.to(device)
        values = {k: v.cpu().tolist() for k, v in per_image_metrics(fake, real).items()}
        if lpips is not None:
            values["lpips"] = lpips(fake, real)
        if fid is not None:
            fid.update(_to_uint8(real), real=True)
            fid.update(_to_uint8(fake), real=False)
        for offset in range(x.shape[0]):
            rows.append({"file": dataset.pairs[start + offset].name, **{k: values[k][offset] for k in names}})
    means = {k: sum(float(r[k]) for r in rows) / len(rows) for k in names}
    if fid is not None:
        value = float(fid.compute())
        if math.isfinite(value):
            means["fid"] = value
        else:
            notices.append(f"FID skipped: not finite with {len(rows)} images (use a larger split).")

    paths = EvaluationPaths(out_dir)
    with atomic_path(paths.table) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", *names])
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(paths.metrics, {"split": split, "images": len(rows), "epoch": epoch, **means})
    samples = samples or cfg.samples
    report = _write_report(paths, generator, dataset, rows, means, samples, split, epoch, notices)
    return EvaluationResult(split, epoch, means, paths.table, paths.metrics, report, tuple(notices))


def _write_report(
    paths: EvaluationPaths,
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
    shutil.rmtree(paths.samples, ignore_errors=True)
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
            name = f"{group}_{rank:02d}_{Path(str(rows[index]['file'])).stem}.png"
            save_image_atomic(compose_strip(x, fake, y), paths.samples / name)
            row = rows[index]
            lines.append(
                f"{rank}. `{row['file']}`: L1 {float(row['l1']):.4f}, SSIM {float(row['ssim']):.4f}, "
                f"PSNR {float(row['psnr']):.2f}  \n   ![{name}]({paths.samples.name}/{name})"
            )
    return write_text_atomic(paths.report, "\n".join(lines) + "\n")
