"""The train batches the trainer (and the GPU benchmark) iterate: cut on the device from a decoded cache,
or made per sample in DataLoader workers (data.loader)."""

from __future__ import annotations

import multiprocessing

import torch
from torch.utils.data import DataLoader

from nectargan_core.data.dataset import PairedImageDataset
from nectargan_core.data.decoded import DecodedSplit, DeviceBatches, use_device_loader
from nectargan_core.data.transforms import PairTransform
from nectargan_core.distributed import RankBatches, World
from nectargan_core.settings import Settings


def _worker_context() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported the data pipeline once, so per-epoch workers start fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "torchvision", "nectargan_core.data.dataset", "nectargan_core.data.transforms"]
    )
    return context


def train_loader(
    settings: Settings, device: torch.device, world: World, generator: torch.Generator
) -> DataLoader | DeviceBatches:
    """Batches of the train split; under torchrun this process's share of the global batches."""
    if use_device_loader(settings.data, device):
        return DeviceBatches(DecodedSplit.load(settings.data, "train"), settings.data, device, generator, world)
    dataset = PairedImageDataset(settings.data, "train", PairTransform(settings.data, train=True))
    if world.distributed:  # each process takes its share of the global batches one process would see
        batches = {"batch_sampler": RankBatches(len(dataset), settings.data.batch_size, world, generator)}
    else:
        batches = {"batch_size": settings.data.batch_size, "shuffle": True}
    return DataLoader(
        dataset,
        **batches,
        generator=generator,
        num_workers=settings.data.num_workers,
        pin_memory=device.type == "cuda",
        # Workers start from a clean forkserver, not a fork of this process: a fork inherits the
        # threads of whatever hosts training (Prefect, MLflow's system metrics) and can hang or die.
        multiprocessing_context=_worker_context() if settings.data.num_workers > 0 else None,
    )
