"""Train and eval preprocessing of an (input, target) pair, as the trainer and the evaluation see it.

Train: bicubic resize of both to load size, the same random crop and joint augmentations on
both, then input-only and target-only pixel augmentations, then [-1, 1]. Eval: bicubic resize
to crop size, no augmentation.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from nectargan_core.data.augment import (
    build_joint_augmentations,
    build_pixel_augmentations,
    input_augmentation_specs,
)
from nectargan_core.settings import DataSettings


def _resize(size: int) -> v2.Resize:
    return v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def _to_unit_float() -> v2.ToDtype:
    return v2.ToDtype(torch.float32, scale=True)


def _to_signed(image: torch.Tensor) -> torch.Tensor:
    return image.as_subclass(torch.Tensor) * 2.0 - 1.0


class PairTransform:
    """Callable (input PIL, target PIL) -> (input, target) float tensors in [-1, 1]."""

    def __init__(self, data: DataSettings, train: bool) -> None:
        self.train = train
        if train:
            self.joint = v2.Compose(
                [
                    _resize(data.load_size),
                    v2.RandomCrop(data.crop_size),
                    _to_unit_float(),
                    build_joint_augmentations(data.augment.joint),
                ]
            )
            self.input_only = build_pixel_augmentations(input_augmentation_specs(data.augment.input))
            self.target_only = build_pixel_augmentations(data.augment.target)
        else:
            self.joint = v2.Compose([_resize(data.crop_size), _to_unit_float()])

    def __call__(self, inp: Image.Image, target: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        a = tv_tensors.Image(v2.functional.pil_to_tensor(inp))
        b = tv_tensors.Image(v2.functional.pil_to_tensor(target))
        a, b = self.joint(a, b)
        if self.train:
            a, b = self.input_only(a), self.target_only(b)
        return _to_signed(a.clamp(0, 1)), _to_signed(b.clamp(0, 1))
