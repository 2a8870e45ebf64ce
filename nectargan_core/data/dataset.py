"""Paired image datasets: aligned A|B files, or A/ and B/ folders matched by file name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from nectargan_core.files import list_images, read_image
from nectargan_core.settings import DataSettings

PairTransform = Callable[[Image.Image, Image.Image], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PairFiles:
    """Where one pair lives on disk: one aligned file, or an A file and its B partner."""

    name: str
    a: Path
    b: Path | None = None


def split_layout(split_dir: Path, layout: str) -> Literal["aligned", "folders"]:
    """'auto' means folders when ``split_dir/A`` exists, aligned otherwise."""
    if layout == "auto":
        return "folders" if (split_dir / "A").is_dir() else "aligned"
    return layout  # type: ignore[return-value]


def list_pairs(root: Path, split: str, layout: str = "auto") -> list[PairFiles]:
    """Every pair of ``root/split`` in sorted file-name order.

    In the folders layout an A file without a B partner of the same name is skipped here;
    dataset validation reports it.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir}: split folder missing; the dataset root needs train/ and val/ (test/ optional)"
        )
    if split_layout(split_dir, layout) == "aligned":
        return [PairFiles(p.name, p) for p in list_images(split_dir)]
    b_by_name = {p.name: p for p in list_images(split_dir / "B")} if (split_dir / "B").is_dir() else {}
    return [PairFiles(p.name, p, b_by_name[p.name]) for p in list_images(split_dir / "A") if p.name in b_by_name]


def _mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def load_pair(files: PairFiles, data: DataSettings) -> tuple[Image.Image, Image.Image]:
    """(input, target) in the configured direction, converted to the configured channel modes."""
    first = read_image(files.a)
    if files.b is None:
        half = first.width // 2
        a, b = first.crop((0, 0, half, first.height)), first.crop((half, 0, 2 * half, first.height))
    else:
        a, b = first, read_image(files.b)
    if data.direction == "BtoA":
        a, b = b, a
    return a.convert(_mode(data.input_channels)), b.convert(_mode(data.output_channels))


class PairedImageDataset(Dataset):
    """Yields (input, target) tensors in [-1, 1] for one split."""

    def __init__(self, data: DataSettings, split: str, transform: PairTransform) -> None:
        self.data = data
        self.split = split
        self.transform = transform
        self.pairs = list_pairs(data.root, split, data.layout)
        if not self.pairs:
            raise ValueError(f"{Path(data.root) / split}: no image pairs found; add images or fix data.root")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*load_pair(self.pairs[index], self.data))


def first_val_pairs(data: DataSettings, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` val pairs (all when None) as stacked (inputs, targets), through the eval
    transform (no random crop or flip): the same pixels for every epoch, run and export."""
    from nectargan_core.data import transforms

    val = PairedImageDataset(data, "val", transforms.PairTransform(data, train=False))
    pairs = [val[i] for i in range(len(val) if count is None else min(count, len(val)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
