"""The device loader: each image decoded and resized once into a uint8 cache, then every batch's
random crops and flips cut on the training device.

A GPU step of the default networks takes milliseconds; decoding and resizing each sample with PIL
at every step (the workers loader) cannot keep up with that. Here the decoded, load-size pairs sit
in memory (on the GPU itself when they are small next to it) or, when larger than
``data.cache_memory_gb``, in a memory-mapped file under ``data.cache_dir`` keyed by the files and
the settings that shape them. A batch is one gather, one copy from pinned memory (non_blocking)
and one indexing op for the crops; the only random draws are the crop offsets and flips, from
torch's global generator on the CPU (seeded per epoch as the workers loader is).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler
from torchvision.transforms import v2

from nectargan_core.data.dataset import PairFiles, list_pairs, load_pair
from nectargan_core.distributed import RankBatches, World
from nectargan_core.files import naming
from nectargan_core.settings import DataSettings, cpu_only_augmentations

log = logging.getLogger(__name__)
_ON_DEVICE_SHARE = 0.1  # a decoded split this small next to the GPU's memory lives on the GPU


def use_device_loader(data: DataSettings, device: torch.device) -> bool:
    """data.loader, with 'auto' resolved: the device loader on CUDA when only flips are on."""
    if data.loader != "auto":
        return data.loader == "device"
    return device.type == "cuda" and not cpu_only_augmentations(data.augment)


def dataset_key(pairs: list[PairFiles], data: DataSettings, split: str) -> str:
    """Changes when a file, the split's layout, the direction, the channels or the load size does."""

    def stat(path: Path | None) -> list[int]:
        if path is None:
            return []
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]

    shape = [split, data.layout, data.direction, data.input_channels, data.output_channels, data.load_size]
    files = [[p.name, stat(p.a), stat(p.b)] for p in pairs]
    return hashlib.sha256(json.dumps([shape, files]).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class DecodedSplit:
    """The pairs of one split as uint8 arrays (N, load, load, C): input ``a`` and target ``b``."""

    a: np.ndarray
    b: np.ndarray
    folder: Path | None  # the memory-mapped copy, or None when the split is held in memory

    @classmethod
    def load(cls, data: DataSettings, split: str = "train") -> DecodedSplit:
        pairs = list_pairs(data.root, split, data.layout)
        if not pairs:
            raise ValueError(f"{Path(data.root) / split}: no image pairs found; add images or fix data.root")
        size = data.load_size
        nbytes = len(pairs) * size * size * (data.input_channels + data.output_channels)
        if nbytes <= data.cache_memory_gb * 2**30:
            a, b = _decode_all(pairs, data)
            return cls(a, b, None)
        folder = Path(data.cache_dir) / f"{split}-{dataset_key(pairs, data, split)}"
        if not (folder / "done.json").is_file():
            _write_mapped(folder, pairs, data)
        a = np.load(folder / "a.npy", mmap_mode="r")
        b = np.load(folder / "b.npy", mmap_mode="r")
        return cls(a, b, folder)

    def __len__(self) -> int:
        return len(self.a)


def _decoded(files: PairFiles, data: DataSettings, resize: v2.Resize) -> tuple[np.ndarray, np.ndarray]:
    """One pair at load size, exactly as the workers loader resizes it before its random crop."""
    a, b = load_pair(files, data)
    return tuple(resize(v2.functional.pil_to_tensor(im)).permute(1, 2, 0).numpy() for im in (a, b))  # type: ignore[return-value]


def _resize(data: DataSettings) -> v2.Resize:
    size = data.load_size
    return v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def _decode_all(pairs: list[PairFiles], data: DataSettings) -> tuple[np.ndarray, np.ndarray]:
    size, resize = data.load_size, _resize(data)
    a = np.empty((len(pairs), size, size, data.input_channels), np.uint8)
    b = np.empty((len(pairs), size, size, data.output_channels), np.uint8)
    for index, files in enumerate(pairs):
        a[index], b[index] = _decoded(files, data, resize)
    return a, b


def _write_mapped(folder: Path, pairs: list[PairFiles], data: DataSettings) -> None:
    """Decode into .npy files one pair at a time (never the whole split in memory); the folder appears
    complete or not at all."""
    size, resize = data.load_size, _resize(data)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shapes = {"a": data.input_channels, "b": data.output_channels}
    with naming(folder):  # a full disk names no file
        arrays = {
            name: np.lib.format.open_memmap(partial / f"{name}.npy", "w+", np.uint8, (len(pairs), size, size, c))
            for name, c in shapes.items()
        }
        log.info("decoding %d pairs of %s into %s (once)", len(pairs), data.root, folder)
        for index, files in enumerate(pairs):
            arrays["a"][index], arrays["b"][index] = _decoded(files, data, resize)
        for array in arrays.values():
            array.flush()
        (partial / "done.json").write_text(json.dumps({"pairs": len(pairs), "load_size": size}))
    try:
        partial.rename(folder)
    except OSError:  # another process finished it first
        shutil.rmtree(partial, ignore_errors=True)


class DeviceBatches:
    """Batches of (input, target) in [-1, 1] on ``device``, drawn like the workers loader's (a shuffled
    order per epoch from ``generator``; under torchrun each process's share of the global batches)."""

    def __init__(
        self,
        split: DecodedSplit,
        data: DataSettings,
        device: torch.device,
        generator: torch.Generator,
        world: World | None = None,
    ) -> None:
        world = world or World()
        self.crop = data.crop_size
        self.hflip, self.vflip = data.augment.joint.hflip.p, data.augment.joint.vflip.p
        self.device = device
        if world.distributed:
            self.batches = RankBatches(len(split), data.batch_size, world, generator)
        else:
            self.batches = BatchSampler(RandomSampler(range(len(split)), generator=generator), data.batch_size, False)
        self.a, self.b = self._place(split, device)

    @staticmethod
    def _place(split: DecodedSplit, device: torch.device) -> tuple[torch.Tensor | np.ndarray, ...]:
        """On the GPU when small next to it; else the host arrays (memory-mapped ones stay mapped)."""
        if device.type == "cuda" and split.folder is None:
            total = torch.cuda.get_device_properties(device).total_memory
            if split.a.nbytes + split.b.nbytes <= _ON_DEVICE_SHARE * total:
                return torch.from_numpy(split.a).to(device), torch.from_numpy(split.b).to(device)
        return split.a, split.b

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.batches:
            yield self.cut(torch.as_tensor(indices))

    def _upload(self, values: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the device without a host sync (pinned, non_blocking on CUDA)."""
        if self.device.type == "cuda":
            values = values.pin_memory()
        return values.to(self.device, non_blocking=True)

    def _gather(
        self, images: torch.Tensor | np.ndarray, index: torch.Tensor, device_index: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(images, torch.Tensor):  # already on the GPU
            return images[device_index]
        return self._upload(torch.from_numpy(images[index.numpy()]))  # a gather: a copy, also from a memory map

    def cut(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The random crops and flips of one batch, the same on input and target.

        The draws are made on the host and reach the device in one non-blocking copy: a plain
        ``.to(device)`` of pageable memory would wait for the GPU's queue to drain at every batch.
        """
        count, size = len(index), self.a.shape[1]
        offsets = torch.randint(0, size - self.crop + 1, (count, 2))
        flips = torch.rand(count, 2) < torch.tensor([self.hflip, self.vflip])
        plan = self._upload(torch.cat([index[:, None], offsets, flips.long()], dim=1))
        device_index, top, left = plan[:, 0], plan[:, 1:2], plan[:, 2:3]
        span = torch.arange(self.crop, device=self.device)
        rows, cols = (top + span)[:, :, None], (left + span)[:, None, :]
        hflip, vflip = (plan[:, 3:5].bool().view(count, 2, 1, 1, 1)).unbind(1)
        sample = torch.arange(count, device=self.device)[:, None, None]

        def crop(images: torch.Tensor | np.ndarray) -> torch.Tensor:
            batch = self._gather(images, index, device_index)[sample, rows, cols]  # (B, crop, crop, C)
            batch = batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            batch = torch.where(hflip, batch.flip(-1), batch)
            return torch.where(vflip, batch.flip(-2), batch)

        return crop(self.a), crop(self.b)
