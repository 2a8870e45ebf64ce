"""Training img/s on one GPU, data loading included, for three ways of running the same pix2pix step.

  (a) reference: a plain eager fp32 step of the same networks and losses (GAN + 100 L1), fed the
      way the reference toolbox feeds it: PIL decode, resize and crop per sample in DataLoader
      workers, fp32, contiguous tensors;
  (b) ours with the default settings (on CUDA: bf16 autocast, fused Adam, the device loader);
  (c) ours with the fastest settings: (b) plus channels_last and train.compile (and the device
      loader, bf16 where they are not already the default);
and, between (b) and (c), (b) with each of those settings alone: what each one buys.

Each line also gives the share of the device's measured bf16 matmul peak that the step reaches
(FLOPs of one step counted with torch.utils.flop_counter), the peak GPU memory, and the share of
the time the host waited for the next batch (with CUDA's queue full, a fed GPU leaves that near 0).

    python benchmarks/gpu_throughput.py             # 256 px, batch 1 and 16, on the GPU
    python benchmarks/gpu_throughput.py --smoke     # 32 px, tiny networks, a few steps; CPU without a GPU

Runs without Prefect, MLflow or DVC (the GPU machines have none of them).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from train_step import bench_settings, floor_step

from nectargan_core.data.dataset import PairedImageDataset
from nectargan_core.data.loaders import train_loader
from nectargan_core.data.sample import generate_sample_dataset
from nectargan_core.data.transforms import PairTransform
from nectargan_core.device import autocast_dtype, cpu_has_native_bf16
from nectargan_core.distributed import World
from nectargan_core.settings import SampleDataSettings, Settings, with_changes
from nectargan_core.training.step import GANStep


@dataclass(frozen=True)
class Variant:
    label: str
    settings: Settings
    reference: bool = False


def variants(base: Settings, device: torch.device) -> list[Variant]:
    fastest_precision = "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"
    fastest = {
        "train.precision": fastest_precision,
        "train.channels_last": True,
        "train.compile": True,
        "data.loader": "device",
    }
    return [
        Variant("(a) reference eager fp32, PIL per sample", with_changes(base, {"train.precision": "fp32"}), True),
        Variant("(b) ours, defaults", base),
        # What each setting buys on top of the defaults:
        Variant("(b) + train.channels_last", with_changes(base, {"train.channels_last": True})),
        Variant("(b) + train.compile", with_changes(base, {"train.compile": True})),
        Variant("(b) + data.loader device", with_changes(base, {"data.loader": "device"})),
        Variant("(c) ours, fastest", with_changes(base, fastest, "the fastest settings")),
    ]


def reference_batches(settings: Settings, workers: int) -> DataLoader:
    dataset = PairedImageDataset(settings.data, "train", PairTransform(settings.data, train=True))
    batch = settings.data.batch_size
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


def endless(loader: object) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in itertools.count():
        yield from loader  # type: ignore[misc]


def matmul_peak(device: torch.device, size: int, iters: int = 20) -> tuple[float, str]:
    """Measured TFLOP/s of a square matmul: bf16 where the device has it natively, else fp32."""
    dtype = torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12, str(dtype).removeprefix("torch.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(settings: Settings, device: torch.device) -> int:
    """FLOPs of one training step (forward and backward of G and D), counted on the eager reference step:
    the variants run the same networks and losses."""
    size, batch = settings.data.crop_size, settings.data.batch_size
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        floor_step(settings, device, None)(x, x)
    return counter.get_total_flops()


def measure(
    variant: Variant, device: torch.device, warmup: int, steps: int, workers: int, flops: int
) -> dict[str, float]:
    settings = variant.settings
    torch._dynamo.reset()  # each variant compiles afresh, as a training process would
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if variant.reference:
        step = floor_step(settings, device, None)
        batches = endless(reference_batches(settings, workers))
        memory_format = torch.contiguous_format
    else:
        ours = GANStep(settings, device, autocast_dtype(settings.train, device))
        step, memory_format = ours, ours.memory_format
        batches = endless(train_loader(settings, device, World(), torch.Generator()))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(batches)
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return x, y.to(device, non_blocking=True).contiguous(memory_format=memory_format)

    for _ in range(warmup):  # compiles (train.compile) and autotunes here, outside the timing
        step(*next_batch())
    sync(device)
    waited, running = 0.0, None
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        x, y = next_batch()
        waited += time.perf_counter() - before
        out = step(x, y)
        running = out.sum() if running is None else running + out.sum()
    float(running)  # the one read-back, as the trainer reads its losses once per log interval
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    batch = settings.data.batch_size
    return {"img_s": steps * batch / elapsed, "flops_s": steps * flops / elapsed, "wait": waited / elapsed, "mem": peak}


def base_settings(root: Path, size: int, batch: int, device: torch.device, smoke: bool) -> Settings:
    settings = bench_settings(size, "auto", False)
    changes: dict[str, object] = {
        "data.root": str(root),
        "data.load_size": size * 286 // 256,
        "data.batch_size": batch,
        "train.device": device.type,
        "train.validate_every": 0,
    }
    if smoke:
        changes |= {  # the tests' tiny networks: variant (c) compiles a small graph (minutes less)
            "model.generator.features": 8,
            "model.generator.n_downs": 1,
            "model.generator.dropout_blocks": 2,
            "model.discriminator.features": 8,
        }
    return with_changes(settings, changes, "the benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="32 px, tiny networks, batch 2, 3 steps: checks it runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant and batch")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=400, help="train pairs generated (facades has 400)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference (its default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batches, args.steps, args.warmup, args.images, args.workers = 32, [2], 3, 1, 8, 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    peak, peak_dtype = matmul_peak(device, 8192 if device.type == "cuda" else 256 if args.smoke else 1024)
    print(f"{name}; torch {torch.__version__}; measured {peak_dtype} matmul peak {peak:,.1f} TFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        half = max(args.size, 64)
        generate_sample_dataset(SampleDataSettings(out=root, size=half, train=args.images, val=1, test=1, seed=0))
        results: dict[tuple[str, int], float] = {}
        for batch in args.batches:
            base = base_settings(root, args.size, batch, device, args.smoke)
            flops = step_flops(base, device)
            print(f"batch {batch}: {flops / batch / 1e9:.3g} GFLOP per image per step")
            for variant in variants(base, device):
                row = measure(variant, device, args.warmup, args.steps, args.workers, flops)
                results[variant.label, batch] = row["img_s"]
                memory = f"{row['mem'] / 2**30:.2f} GiB" if row["mem"] == row["mem"] else "n/a (CPU)"
                print(
                    f"{variant.label:<42} batch {batch:>2} {args.size} px: {row['img_s']:9.1f} img/s  "
                    f"{100 * row['flops_s'] / 1e12 / peak:5.1f}% of {peak_dtype} peak  peak mem {memory}  "
                    f"data wait {100 * row['wait']:4.1f}%",
                    flush=True,
                )
        labels = [variant.label for variant in variants(base, device)]
        for batch in args.batches:
            reference = results[labels[0], batch]
            ratios = ", ".join(
                f"{label[:3]}/(a) {results[label, batch] / reference:.2f}x" for label in (labels[1], labels[-1])
            )
            print(f"batch {batch}: {ratios}")


if __name__ == "__main__":
    main()
