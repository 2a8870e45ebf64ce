"""Training augmentations, built on ``torchvision.transforms.v2``.

Joint augmentations are called as ``joint(input_image, target_image)``; v2 draws one set of random
parameters per call (``make_params``) and applies it to both images, so geometry stays aligned
even when the two images have different channel counts. Pixel augmentations take one image.
Every random draw comes from torch's global RNG, so ``torch.manual_seed`` reproduces a run.
Images are float CHW tensors in [0, 1] with 1 or 3 channels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import PIL.Image
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from nectargan_core.settings import (
    ColorJitterAug,
    CompressionAug,
    GammaAug,
    GaussianNoiseAug,
    GrayscaleAug,
    InputAugmentations,
    JointAugmentations,
    MotionBlurAug,
    PixelAugmentation,
)

__all__ = [
    "ChannelSafeColorJitter",
    "Clamp01",
    "CoarseDropout",
    "Compression",
    "Gamma",
    "GaussianNoiseRange",
    "GrayscaleKeepChannels",
    "JointCompose",
    "MotionBlur",
    "OpticalDistortion",
    "Rot90",
    "build_joint_augmentations",
    "build_pixel_augmentations",
    "input_augmentation_specs",
    "motion_blur_kernel",
]


def _like(output: torch.Tensor, inpt: torch.Tensor) -> torch.Tensor:
    """Plain torch ops drop the tv_tensor subclass; put it back so later v2 steps still see an Image."""
    return tv_tensors.wrap(output, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else output


def _uniform(low: float, high: float) -> float:
    """One float from U(low, high) drawn from torch's global RNG (reproducible with manual_seed)."""
    return float(torch.empty(1).uniform_(low, high).item())


def _randint(low: int, high: int) -> int:
    """One int from U{low..high} (inclusive) drawn from torch's global RNG."""
    return int(torch.randint(low, high + 1, (1,)).item())


class _TensorTransform(v2.Transform):
    """Base for our transforms: they operate on tensors only (PIL images would pass through unchanged)."""

    _transformed_types = (torch.Tensor,)


# ---------------------------------------------------------------- joint (geometric) transforms


class Rot90(_TensorTransform):
    """Rotate by k * 90 degrees, k uniform in {1, 2, 3}; v2 has no discrete-angle rotation."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": _randint(1, 3)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _like(torch.rot90(inpt, params["k"], dims=(-2, -1)), inpt)


class OpticalDistortion(_TensorTransform):
    """Radial lens distortion, sampled with grid_sample (bilinear, border padding).

    On normalised coordinates (x, y in [-1, 1], centred) with r = sqrt(x^2 + y^2), each output pixel
    reads the source at radius r (1 + k r^2) (camera) or r (1 + k r) (fisheye), k ~ U(distort_range).
    """

    def __init__(self, distort_range: tuple[float, float], mode: str = "camera") -> None:
        super().__init__()
        if mode not in ("camera", "fisheye"):
            raise ValueError(f"mode must be 'camera' or 'fisheye', got {mode!r}")
        self.distort_range = (float(distort_range[0]), float(distort_range[1]))
        self.mode = mode

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": _uniform(*self.distort_range)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        ys = torch.linspace(-1.0, 1.0, height, device=inpt.device, dtype=inpt.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=inpt.device, dtype=inpt.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        r = torch.sqrt(xx * xx + yy * yy)
        scale = 1.0 + params["k"] * (r * r if self.mode == "camera" else r)
        grid = torch.stack((xx * scale, yy * scale), dim=-1).unsqueeze(0)
        batched = inpt.reshape(-1, *inpt.shape[-3:])
        out = nnf.grid_sample(
            batched.as_subclass(torch.Tensor),
            grid.expand(batched.shape[0], -1, -1, -1),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        return _like(out.reshape(inpt.shape), inpt)


class CoarseDropout(_TensorTransform):
    """Zero-filled rectangular holes at the same places in every image of the call.

    v2.RandomErasing cuts one hole sized by area and aspect ratio; the spec wants a random number of
    holes whose sides are fractions of the image sides.
    """

    def __init__(self, holes: tuple[int, int], size_range: tuple[float, float]) -> None:
        super().__init__()
        if not 1 <= holes[0] <= holes[1]:
            raise ValueError(f"holes must satisfy 1 <= low <= high, got {holes}")
        if not 0.0 < size_range[0] <= size_range[1] <= 1.0:
            raise ValueError(f"size_range must satisfy 0 < low <= high <= 1, got {size_range}")
        self.holes = (int(holes[0]), int(holes[1]))
        self.size_range = (float(size_range[0]), float(size_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        boxes = []
        for _ in range(_randint(*self.holes)):
            hole_h = max(1, round(_uniform(*self.size_range) * height))
            hole_w = max(1, round(_uniform(*self.size_range) * width))
            top = _randint(0, height - hole_h)
            left = _randint(0, width - hole_w)
            boxes.append((top, left, hole_h, hole_w))
        return {"boxes": boxes}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = inpt.as_subclass(torch.Tensor).clone()
        for top, left, hole_h, hole_w in params["boxes"]:
            out[..., top : top + hole_h, left : left + hole_w] = 0.0
        return _like(out, inpt)


class JointCompose(v2.Compose):
    """Compose for (input, target) pairs that first turns plain tensors into tv_tensors.Image.

    v2 transforms only one plain tensor per call (the others pass through untouched), which would
    silently leave the target un-augmented; wrapping makes every image in the call a real Image.
    """

    def forward(self, *inputs: Any) -> Any:
        wrapped = tuple(
            tv_tensors.Image(x) if isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor) else x
            for x in inputs
        )
        return super().forward(*wrapped)


def build_joint_augmentations(cfg: JointAugmentations) -> v2.Transform:
    """Pipeline applied as ``joint(input, target)`` with the same random parameters on both images.

    Order: horizontal flip, vertical flip, rot90, elastic, optical distortion, coarse dropout.
    Augmentations with p == 0 are left out; when all are, the pipeline is the identity.
    """
    steps: list[v2.Transform] = []
    if cfg.hflip.p > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip.p))
    if cfg.vflip.p > 0:
        steps.append(v2.RandomVerticalFlip(p=cfg.vflip.p))
    if cfg.rot90.p > 0:
        steps.append(v2.RandomApply([Rot90()], p=cfg.rot90.p))
    if cfg.elastic.p > 0:
        elastic = v2.ElasticTransform(alpha=cfg.elastic.alpha, sigma=cfg.elastic.sigma)
        steps.append(v2.RandomApply([elastic], p=cfg.elastic.p))
    if cfg.optical_distortion.p > 0:
        od = cfg.optical_distortion
        steps.append(v2.RandomApply([OpticalDistortion(od.distort_range, od.mode)], p=od.p))
    if cfg.coarse_dropout.p > 0:
        cd = cfg.coarse_dropout
        steps.append(v2.RandomApply([CoarseDropout(cd.holes, cd.size_range)], p=cd.p))
    return JointCompose(steps or [v2.Identity()])


# ---------------------------------------------------------------- pixel (single-image) transforms


class ChannelSafeColorJitter(v2.ColorJitter):
    """v2.ColorJitter that never applies saturation or hue to a 1-channel image (they need RGB)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.shape[-3] == 1:
            params = {**params, "saturation_factor": None, "hue_factor": None}
        return super().transform(inpt, params)


class GaussianNoiseRange(_TensorTransform):
    """Additive Gaussian noise whose std is drawn per call from a range (v2.GaussianNoise has a fixed std)."""

    def __init__(self, std_range: tuple[float, float]) -> None:
        super().__init__()
        if not 0.0 <= std_range[0] <= std_range[1]:
            raise ValueError(f"std_range must satisfy 0 <= low <= high, got {std_range}")
        self.std_range = (float(std_range[0]), float(std_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"std": _uniform(*self.std_range)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        noise = torch.randn(inpt.shape, device=inpt.device, dtype=inpt.dtype) * params["std"]
        return _like((inpt.as_subclass(torch.Tensor) + noise).clamp(0.0, 1.0), inpt)


def motion_blur_kernel(size: int, angle: float) -> torch.Tensor:
    """Odd ``size`` x ``size`` kernel of an anti-aliased line through the centre at ``angle`` (radians).

    Each cell's weight falls off linearly with its distance to the line (zero beyond one pixel);
    the kernel sums to 1, so flat regions keep their value.
    """
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    distance = (yy * math.cos(angle) - xx * math.sin(angle)).abs()
    kernel = (1.0 - distance).clamp(min=0.0)
    return kernel / kernel.sum()


class MotionBlur(_TensorTransform):
    """Linear motion blur: odd kernel size from {3, 5, ..., kernel_limit}, random angle, reflect padding."""

    def __init__(self, kernel_limit: int) -> None:
        super().__init__()
        if kernel_limit < 3:
            raise ValueError(f"kernel_limit must be at least 3, got {kernel_limit}")
        self.kernel_limit = int(kernel_limit)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        largest = self.kernel_limit if self.kernel_limit % 2 else self.kernel_limit - 1
        size = 2 * _randint(1, (largest - 1) // 2) + 1
        angle = _uniform(0.0, math.pi)
        return {"kernel": motion_blur_kernel(size, angle)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        kernel = params["kernel"].to(device=inpt.device, dtype=inpt.dtype)
        channels = inpt.shape[-3]
        pad = kernel.shape[-1] // 2
        batched = inpt.as_subclass(torch.Tensor).reshape(-1, *inpt.shape[-3:])
        mode = "reflect" if min(inpt.shape[-2:]) > pad else "replicate"
        padded = nnf.pad(batched, (pad, pad, pad, pad), mode=mode)
        weight = kernel.expand(channels, 1, -1, -1)
        out = nnf.conv2d(padded, weight, groups=channels)
        return _like(out.reshape(inpt.shape).clamp(0.0, 1.0), inpt)


class Gamma(_TensorTransform):
    """x ** gamma with gamma ~ U(gamma_range), via v2's adjust_gamma."""

    def __init__(self, gamma_range: tuple[float, float]) -> None:
        super().__init__()
        if not 0.0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range must satisfy 0 < low <= high, got {gamma_range}")
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": _uniform(*self.gamma_range)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


class GrayscaleKeepChannels(_TensorTransform):
    """Grey conversion that keeps the channel count (grey repeated), so the model's input shape holds.

    weighted uses v2's rgb_to_grayscale (ITU-R 601 luma, 0.2989 / 0.587 / 0.114); average is the plain
    channel mean. A 1-channel image is already grey and is returned unchanged.
    """

    def __init__(self, method: str = "weighted") -> None:
        super().__init__()
        if method not in ("weighted", "average"):
            raise ValueError(f"method must be 'weighted' or 'average', got {method!r}")
        self.method = method

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        channels = inpt.shape[-3]
        if channels == 1:
            return inpt
        if self.method == "weighted":
            return self._call_kernel(F.rgb_to_grayscale, inpt, num_output_channels=channels)
        grey = inpt.as_subclass(torch.Tensor).mean(dim=-3, keepdim=True)
        return _like(grey.expand_as(inpt).contiguous(), inpt)


class Compression(_TensorTransform):
    """Lossy JPEG or WebP round trip through PIL in memory, quality ~ U{lo..hi} (values end up on /255)."""

    _PIL_FORMATS: ClassVar[dict[str, str]] = {"jpeg": "JPEG", "webp": "WEBP"}

    def __init__(self, quality_range: tuple[int, int], fmt: str = "jpeg") -> None:
        super().__init__()
        if fmt not in self._PIL_FORMATS:
            raise ValueError(f"format must be 'jpeg' or 'webp', got {fmt!r}")
        if not 1 <= quality_range[0] <= quality_range[1] <= 100:
            raise ValueError(f"quality_range must satisfy 1 <= low <= high <= 100, got {quality_range}")
        self.quality_range = (int(quality_range[0]), int(quality_range[1]))
        self.fmt = fmt

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"quality": _randint(*self.quality_range)}

    def _round_trip(self, image: torch.Tensor, quality: int) -> torch.Tensor:
        """Encode and decode one CHW float image; returns uint8 CHW with the same channel count."""
        mode = "L" if image.shape[0] == 1 else "RGB"
        as_bytes = (image.detach().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        buffer = io.BytesIO()
        F.to_pil_image(as_bytes, mode=mode).save(buffer, format=self._PIL_FORMATS[self.fmt], quality=quality)
        buffer.seek(0)
        with PIL.Image.open(buffer) as decoded:
            return F.pil_to_tensor(decoded.convert(mode))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        plain = inpt.as_subclass(torch.Tensor)
        if plain.shape[-3] not in (1, 3):
            raise ValueError(f"compression needs 1 or 3 channels, got {plain.shape[-3]}")
        flat = plain.reshape(-1, *plain.shape[-3:])
        decoded = torch.stack([self._round_trip(img, params["quality"]) for img in flat])
        out = decoded.to(device=plain.device, dtype=plain.dtype) / 255.0
        return _like(out.reshape(plain.shape), inpt)


class Clamp01(_TensorTransform):
    """Final clamp so a pixel pipeline always returns values in [0, 1]."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _like(inpt.as_subclass(torch.Tensor).clamp(0.0, 1.0), inpt)


def _pixel_transform(spec: PixelAugmentation) -> v2.Transform:
    """The un-gated transform for one pixel augmentation spec."""
    if isinstance(spec, ColorJitterAug):
        return ChannelSafeColorJitter(
            brightness=spec.brightness, contrast=spec.contrast, saturation=spec.saturation, hue=spec.hue
        )
    if isinstance(spec, GaussianNoiseAug):
        return GaussianNoiseRange(spec.std_range)
    if isinstance(spec, MotionBlurAug):
        return MotionBlur(spec.kernel_limit)
    if isinstance(spec, GammaAug):
        return Gamma(spec.gamma_range)
    if isinstance(spec, GrayscaleAug):
        return GrayscaleKeepChannels(spec.method)
    if isinstance(spec, CompressionAug):
        return Compression(spec.quality_range, spec.format)
    raise TypeError(f"unknown pixel augmentation: {spec!r}")


def build_pixel_augmentations(specs: Sequence[PixelAugmentation]) -> v2.Transform:
    """Single-image pipeline (input-only or target-only), in the order given, ending in a [0, 1] clamp.

    Specs with p == 0 are left out; with none left the pipeline is the identity.
    """
    steps: list[v2.Transform] = [v2.RandomApply([_pixel_transform(s)], p=s.p) for s in specs if s.p > 0]
    if not steps:
        return v2.Identity()
    return v2.Compose([*steps, Clamp01()])


def input_augmentation_specs(cfg: InputAugmentations) -> list[PixelAugmentation]:
    """The input-only specs in their fixed order, ready for build_pixel_augmentations."""
    return [cfg.color_jitter, cfg.gaussian_noise, cfg.motion_blur, cfg.gamma, cfg.grayscale, cfg.compression]
