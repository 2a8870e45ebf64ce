"""Images/s of our training step against the floor: a bare PyTorch pix2pix step of the same models.

Both run on random tensors (no data loading), with the default networks (64 features, pix2pix
depth for the size) and the default losses (GAN + 100 * L1). Rounds of ours and the floor
alternate and the median round is reported, so drift in machine load hits both sides alike.

    .venv/bin/python benchmarks/train_step.py                       # 128/256 px, batch 1/4, fp32/bf16
    .venv/bin/python benchmarks/train_step.py --sizes 128 --batches 1 --precisions fp32 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nectargan_core.models import build_discriminator, build_generator
from nectargan_core.settings import Settings, settings_from_dict
from nectargan_core.training.step import GANStep


def bench_settings(size: int, precision: str, channels_last: bool) -> Settings:
    n_downs = size.bit_length() - 1 - 2  # deepest UNet for the size: 1x1 bottleneck
    return settings_from_dict(
        {
            "data": {"load_size": size, "crop_size": size},
            "model": {"generator": {"n_downs": n_downs, "dropout_blocks": min(3, n_downs + 1)}},
            "train": {"precision": precision, "channels_last": channels_last},
        }
    )


def floor_step(settings: Settings, device: torch.device, amp: torch.dtype | None) -> Callable:
    """The minimum a pix2pix step must do: G forward, D update, G update (GAN + L1)."""
    g = build_generator(settings).to(device)
    d = build_discriminator(settings).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            fake = g(x)
            real_logits, fake_logits = d(x, y), d(x, fake.detach())
            loss_d = 0.5 * (
                bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = d(x, fake)
            loss_g = bce(logits, torch.ones_like(logits)) + 100.0 * F.l1_loss(fake, y)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_g.detach()

    return step


def ours(settings: Settings, device: torch.device, amp: torch.dtype | None) -> Callable:
    step = GANStep(settings, device, amp)
    step.set_epoch(1)
    return step


def timed_round(step: Callable, x: torch.Tensor, y: torch.Tensor, iters: int) -> float:
    """Images/s over ``iters`` steps; results are read once at the end, as the trainer does."""
    running = None
    start = time.perf_counter()
    for _ in range(iters):
        out = step(x, y)
        running = out if running is None else running + out.sum()
    running.sum().item()
    return iters * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true", help="run ours in channels_last")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (median reported)")
    parser.add_argument("--iters", type=int, default=3, help="steps per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"device {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(f"{'size':>5} {'batch':>5} {'prec':>5} {'ours img/s':>11} {'floor img/s':>12} {'ours/floor':>11}")
    for size in args.sizes:
        for batch in args.batches:
            for precision in args.precisions:
                settings = bench_settings(size, precision, args.channels_last)
                amp = torch.bfloat16 if precision == "bf16" else None
                torch.manual_seed(0)
                sides = {"ours": ours(settings, device, amp), "floor": floor_step(settings, device, amp)}
                x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
                y = torch.rand(batch, 3, size, size, device=device) * 2 - 1
                if args.channels_last:
                    x, y = (
                        x.contiguous(memory_format=torch.channels_last),
                        y.contiguous(memory_format=torch.channels_last),
                    )
                rates: dict[str, list[float]] = {name: [] for name in sides}
                for step in sides.values():  # warm-up
                    timed_round(step, x, y, 1)
                for _ in range(args.rounds):
                    for name, step in sides.items():
                        rates[name].append(timed_round(step, x, y, args.iters))
                a, b = statistics.median(rates["ours"]), statistics.median(rates["floor"])
                print(f"{size:>5} {batch:>5} {precision:>5} {a:>11.2f} {b:>12.2f} {a / b:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
