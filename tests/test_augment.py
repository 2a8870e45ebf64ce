"""Tests for the joint and pixel augmentation pipelines."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from nectargan_core.data.augment import (
    ChannelSafeColorJitter,
    MotionBlur,
    build_joint_augmentations,
    build_pixel_augmentations,
    input_augmentation_specs,
    motion_blur_kernel,
)
from nectargan_core.settings import (
    Augmentations,
    CoarseDropoutAug,
    ColorJitterAug,
    CompressionAug,
    ElasticAug,
    FlipAug,
    GammaAug,
    GaussianNoiseAug,
    GrayscaleAug,
    InputAugmentations,
    JointAugmentations,
    MotionBlurAug,
    OpticalDistortionAug,
    Rot90Aug,
)

H, W = 32, 48  # non-square on purpose; large enough for the default elastic sigma's blur kernel


def _image(channels: int = 3, seed: int = 0, low: float = 0.0, high: float = 1.0) -> tv_tensors.Image:
    gen = torch.Generator().manual_seed(seed)
    return tv_tensors.Image(low + (high - low) * torch.rand(channels, H, W, generator=gen))


def _only(name: str, **kwargs: object) -> JointAugmentations:
    """A JointAugmentations with every augmentation off except ``name`` at p=1."""
    classes = {
        "hflip": FlipAug,
        "vflip": FlipAug,
        "rot90": Rot90Aug,
        "elastic": ElasticAug,
        "optical_distortion": OpticalDistortionAug,
        "coarse_dropout": CoarseDropoutAug,
    }
    fields = {"hflip": FlipAug(p=0.0), name: classes[name](p=1.0, **kwargs)}
    return JointAugmentations(**fields)


JOINT_CASES = [
    ("hflip", {}),
    ("vflip", {}),
    ("rot90", {}),
    ("elastic", {}),
    ("optical_distortion", {"mode": "camera"}),
    ("optical_distortion", {"mode": "fisheye"}),
    ("coarse_dropout", {}),
]

ALL_JOINT = JointAugmentations(
    hflip=FlipAug(p=1.0),
    vflip=FlipAug(p=1.0),
    rot90=Rot90Aug(p=1.0),
    elastic=ElasticAug(p=1.0),
    optical_distortion=OpticalDistortionAug(p=1.0),
    coarse_dropout=CoarseDropoutAug(p=1.0),
)

PIXEL_CASES = [
    ColorJitterAug(p=1.0),
    ColorJitterAug(p=1.0, brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.5, 1.5), hue=(-0.1, 0.1)),
    GaussianNoiseAug(p=1.0),
    MotionBlurAug(p=1.0),
    MotionBlurAug(p=1.0, kernel_limit=4),
    GammaAug(p=1.0),
    GrayscaleAug(p=1.0, method="weighted"),
    GrayscaleAug(p=1.0, method="average"),
    CompressionAug(p=1.0, format="jpeg"),
    CompressionAug(p=1.0, format="webp"),
]


def _pixel_id(spec: object) -> str:
    return "-".join(str(v) for k, v in spec.model_dump().items() if k in ("kind", "method", "format"))  # type: ignore[attr-defined]


# ---------------------------------------------------------------- joint


@pytest.mark.parametrize(("name", "kwargs"), JOINT_CASES, ids=[f"{n}-{k}" for n, k in JOINT_CASES])
def test_joint_single_augmentation_shares_params_and_changes_image(name: str, kwargs: dict) -> None:
    torch.manual_seed(1)
    img = _image()
    joint = build_joint_augmentations(_only(name, **kwargs))
    out_a, out_b = joint(img, img.clone())
    assert isinstance(out_a, tv_tensors.Image) and isinstance(out_b, tv_tensors.Image)
    assert torch.equal(out_a, out_b)
    assert out_a.shape[-3] == 3
    assert out_a.shape != img.shape or not torch.allclose(out_a, img, atol=1e-4)


def test_joint_pipeline_keeps_order_and_leaves_out_p0() -> None:
    steps = build_joint_augmentations(ALL_JOINT).transforms
    assert [type(t) for t in steps[:2]] == [v2.RandomHorizontalFlip, v2.RandomVerticalFlip]
    inner = [type(t.transforms[0]).__name__ for t in steps[2:]]
    assert inner == ["Rot90", "ElasticTransform", "OpticalDistortion", "CoarseDropout"]
    only_rot = build_joint_augmentations(_only("rot90")).transforms
    assert len(only_rot) == 1


def test_joint_rgb_input_and_grey_target_stay_aligned() -> None:
    torch.manual_seed(2)
    img = _image(3)
    target = tv_tensors.Image(img.mean(dim=0, keepdim=True))
    out_in, out_tg = build_joint_augmentations(ALL_JOINT)(img, target)
    assert out_in.shape[-3] == 3 and out_tg.shape[-3] == 1
    assert out_in.shape[-2:] == out_tg.shape[-2:]
    # Every joint op is linear per channel, so the same params keep "target = mean of input".
    assert torch.allclose(out_in.mean(dim=0, keepdim=True), out_tg, atol=1e-5)
    assert out_tg.shape != target.shape or not torch.allclose(out_tg, target, atol=1e-4)


def test_joint_plain_tensors_are_both_transformed() -> None:
    torch.manual_seed(3)
    img = _image().as_subclass(torch.Tensor)
    out_a, out_b = build_joint_augmentations(_only("coarse_dropout"))(img, img.clone())
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_b, img)


def test_joint_all_off_is_identity() -> None:
    cfg = JointAugmentations(hflip=FlipAug(p=0.0))
    img, target = _image(3), _image(1, seed=1)
    joint = build_joint_augmentations(cfg)
    for _ in range(5):
        out_in, out_tg = joint(img, target)
        assert torch.equal(out_in, img) and torch.equal(out_tg, target)


def test_default_joint_is_only_horizontal_flip() -> None:
    steps = build_joint_augmentations(JointAugmentations()).transforms
    assert len(steps) == 1
    assert isinstance(steps[0], v2.RandomHorizontalFlip) and steps[0].p == 0.5


def test_coarse_dropout_holes_are_zero_and_bounded() -> None:
    torch.manual_seed(4)
    img = _image(low=0.1)  # no natural zeros, so zeros mark the holes
    cfg = _only("coarse_dropout", holes=(3, 3), size_range=(0.25, 0.25))
    out, _ = build_joint_augmentations(cfg)(img, img.clone())
    zeros = int((out[0] == 0).sum())
    assert 8 * 12 <= zeros <= 3 * 8 * 12  # three 8x12 holes, possibly overlapping
    assert torch.equal(out[:, out[0] != 0], img[:, out[0] != 0])


# ---------------------------------------------------------------- pixel


@pytest.mark.parametrize("spec", PIXEL_CASES, ids=_pixel_id)
def test_pixel_augmentation_changes_image_keeps_shape_and_range(spec: object) -> None:
    torch.manual_seed(5)
    img = _image(3, low=0.05, high=0.95)
    out = build_pixel_augmentations([spec])(img)  # type: ignore[list-item]
    assert out.shape == img.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, img, atol=1e-4)


@pytest.mark.parametrize("spec", PIXEL_CASES, ids=_pixel_id)
def test_pixel_augmentation_on_one_channel(spec: object) -> None:
    torch.manual_seed(6)
    img = _image(1)
    out = build_pixel_augmentations([spec])(img)  # type: ignore[list-item]
    assert out.shape == img.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    if isinstance(spec, GrayscaleAug):
        assert torch.equal(out, img)


def test_color_jitter_brightness_only_scales_by_one_constant() -> None:
    spec = ColorJitterAug(p=1.0, brightness=(0.8, 1.2))
    pipeline = build_pixel_augmentations([spec])
    jitter = pipeline.transforms[0].transforms[0]
    assert isinstance(jitter, ChannelSafeColorJitter)
    assert jitter.contrast is None and jitter.saturation is None and jitter.hue is None
    img = _image(3, low=0.1, high=0.5)  # 0.5 * 1.2 < 1, so nothing is clipped
    for seed in range(3):
        torch.manual_seed(seed)
        ratio = pipeline(img) / img
        assert float(ratio.max() - ratio.min()) < 1e-5
        assert 0.8 - 1e-6 <= float(ratio.mean()) <= 1.2 + 1e-6
        assert abs(float(ratio.mean()) - 1.0) > 1e-4


@pytest.mark.parametrize("method", ["weighted", "average"])
def test_grayscale_gives_equal_channels(method: str) -> None:
    img = _image(3)
    out = build_pixel_augmentations([GrayscaleAug(p=1.0, method=method)])(img)
    assert out.shape == img.shape
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    weights = torch.tensor([0.299, 0.587, 0.114]) if method == "weighted" else torch.full((3,), 1 / 3)
    expected = (img * weights[:, None, None]).sum(dim=0)
    assert torch.allclose(out[0], expected, atol=1e-3)


def test_motion_blur_kernel_is_normalised_odd_and_bounded() -> None:
    torch.manual_seed(7)
    blur = MotionBlur(kernel_limit=8)
    sizes = set()
    for _ in range(40):
        kernel = blur.make_params([])["kernel"]
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        assert torch.isclose(kernel.sum(), torch.tensor(1.0))
        sizes.add(kernel.shape[0])
    assert sizes == {3, 5, 7}
    horizontal = motion_blur_kernel(5, 0.0)
    assert torch.allclose(horizontal[2], torch.full((5,), 0.2)) and horizontal.sum(dim=1)[[0, 1, 3, 4]].eq(0).all()


def test_gamma_is_a_power() -> None:
    torch.manual_seed(8)
    img = _image(3, low=0.1, high=0.9)
    out = build_pixel_augmentations([GammaAug(p=1.0, gamma_range=(2.0, 2.0))])(img)
    assert torch.allclose(out, img**2, atol=1e-6)


def test_target_list_works() -> None:
    settings = Augmentations.model_validate(
        {"target": [{"kind": "gaussian_noise", "p": 1.0}, {"kind": "gamma", "p": 1.0}]}
    )
    torch.manual_seed(9)
    img = _image(1)
    out = build_pixel_augmentations(settings.target)(img)
    assert out.shape == img.shape and not torch.allclose(out, img)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_input_specs_order_and_defaults_off() -> None:
    specs = input_augmentation_specs(InputAugmentations())
    kinds = [s.kind for s in specs]
    assert kinds == ["color_jitter", "gaussian_noise", "motion_blur", "gamma", "grayscale", "compression"]
    img = _image(3)
    assert torch.equal(build_pixel_augmentations(specs)(img), img)


def test_empty_spec_list_is_identity() -> None:
    img = _image(3)
    assert torch.equal(build_pixel_augmentations([])(img), img)


def test_zero_probability_specs_are_left_out() -> None:
    specs = [GaussianNoiseAug(p=0.0), GammaAug(p=1.0), MotionBlurAug(p=0.0)]
    steps = build_pixel_augmentations(specs).transforms
    assert len(steps) == 2  # gamma and the final clamp


# ---------------------------------------------------------------- reproducibility


def _run_everything(seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    joint = build_joint_augmentations(ALL_JOINT.model_copy(update={"hflip": FlipAug(p=0.5)}))
    cfg = InputAugmentations(
        color_jitter=ColorJitterAug(p=1.0, contrast=(0.8, 1.2)),
        gaussian_noise=GaussianNoiseAug(p=1.0),
        motion_blur=MotionBlurAug(p=0.5),
        gamma=GammaAug(p=1.0),
        grayscale=GrayscaleAug(p=0.5),
        compression=CompressionAug(p=1.0),
    )
    pixel = build_pixel_augmentations(input_augmentation_specs(cfg))
    img, target = _image(3), _image(1, seed=1)
    out_in, out_tg = joint(img, target)
    return [pixel(out_in), out_tg]


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    first, again, other = _run_everything(11), _run_everything(11), _run_everything(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True))
