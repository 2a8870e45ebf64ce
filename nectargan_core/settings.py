"""The one typed settings model, loaded from ``params.yaml`` with ``key.sub=value`` overrides.

Every field carries the spec's description so that ``--help`` and the Prefect UI form can show
it. Loading reports every problem in one error (unknown keys with a suggestion, wrong types,
out-of-range values, cross-field conflicts) instead of stopping at the first.

Settings are frozen: a changed copy is made with ``with_changes``, which runs the same checks as
loading ``params.yaml`` (the cross-field ones included), so no code path holds unchecked settings.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from nectargan_core.params_yaml import ParamsLoader, yaml_problem

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _one_line(text: object) -> str:
    """A problem is one line however its key or value is spelled (a newline in a YAML key, say)."""
    return " ".join(str(text).splitlines())


class SettingsError(ValueError):
    """Raised with every problem found in a params file and its overrides: one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = _one_line(source)
        self.problems = [_one_line(p) for p in problems]
        if len(self.problems) == 1:
            advice = "" if ";" in self.problems[0] else "; fix it in the params file (or the -s override) and run again"
            super().__init__(f"{self.source}: {self.problems[0]}{advice}")
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{self.source}: {len(self.problems)} problems in the settings:\n{lines}\n"
            "Fix these keys in the params file (or the override) and run again."
        )


class Strict(BaseModel):
    """Base for every settings group: unknown keys are errors, and values never change after validation.

    Numbers are finite (a NaN range passes every low <= high test), and text is plain: a NUL or a lone
    surrogate would pass here and fail later in a file name or a log, far from the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            if "\x00" in str(value):
                raise ValueError("holds a NUL character (\\x00); remove it")
            try:
                str(value).encode()
            except UnicodeEncodeError:
                raise ValueError("is not valid text (a lone surrogate); retype it") from None
        return value


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"range [{low}, {high}] must be given as [low, high] with low <= high")
    return value


def _positive_range(value: tuple[float, float]) -> tuple[float, float]:
    if _ordered_range(value)[0] <= 0:
        raise ValueError("values must be > 0")
    return value


def _non_negative_range(value: tuple[float, float]) -> tuple[float, float]:
    if _ordered_range(value)[0] < 0:
        raise ValueError("values must be >= 0")
    return value


# ---------------------------------------------------------------- augmentations


class FlipAug(Strict):
    p: Probability = Field(0.0, description="Probability of applying the flip.")


class Rot90Aug(Strict):
    p: Probability = Field(0.0, description="Probability of rotating by a random multiple of 90 degrees.")


class ElasticAug(Strict):
    p: Probability = Field(0.0, description="Probability of an elastic deformation.")
    alpha: float = Field(50.0, gt=0, description="Magnitude of the elastic displacement, in pixels.")
    sigma: float = Field(5.0, gt=0, description="Smoothness (Gaussian sigma) of the displacement field.")


class OpticalDistortionAug(Strict):
    p: Probability = Field(0.0, description="Probability of an optical (lens) distortion.")
    distort_range: tuple[float, float] = Field(
        (-0.3, 0.3), description="Range of the radial distortion coefficient k, sampled uniformly."
    )
    mode: Literal["camera", "fisheye"] = Field(
        "camera", description="Lens model: camera (r' = r(1 + k r^2)) or fisheye (r' = r(1 + k r))."
    )

    _order = field_validator("distort_range")(_ordered_range)


class CoarseDropoutAug(Strict):
    p: Probability = Field(0.0, description="Probability of cutting rectangular holes.")
    holes: tuple[int, int] = Field((1, 4), description="Range of the number of holes, inclusive.")
    size_range: tuple[float, float] = Field(
        (0.05, 0.2), description="Range of each hole's side as a fraction of the image side."
    )

    _order = field_validator("holes")(_positive_range)

    @field_validator("size_range")
    @classmethod
    def _fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if _positive_range(value)[1] > 1:
            raise ValueError("hole sides are fractions of the image side: within (0, 1]")
        return value


class JointAugmentations(Strict):
    """Applied with the same random parameters to input and target."""

    hflip: FlipAug = Field(FlipAug(p=0.5), description="Horizontal flip of both images.")
    vflip: FlipAug = Field(FlipAug(), description="Vertical flip of both images.")
    rot90: Rot90Aug = Field(Rot90Aug(), description="Rotation by 90, 180 or 270 degrees of both images.")
    elastic: ElasticAug = Field(ElasticAug(), description="Elastic deformation of both images.")
    optical_distortion: OpticalDistortionAug = Field(
        OpticalDistortionAug(), description="Lens distortion of both images."
    )
    coarse_dropout: CoarseDropoutAug = Field(
        CoarseDropoutAug(), description="Rectangular holes at the same places in both images."
    )


class ColorJitterAug(Strict):
    kind: Literal["color_jitter"] = "color_jitter"
    p: Probability = Field(0.0, description="Probability of a colour jitter.")
    brightness: tuple[float, float] | None = Field(
        (0.8, 1.2), description="Brightness factor range; null leaves brightness alone."
    )
    contrast: tuple[float, float] | None = Field(None, description="Contrast factor range, or null.")
    saturation: tuple[float, float] | None = Field(None, description="Saturation factor range, or null.")
    hue: tuple[float, float] | None = Field(None, description="Hue shift range within [-0.5, 0.5], or null.")

    @field_validator("brightness", "contrast", "saturation", "hue")
    @classmethod
    def _check(cls, value: tuple[float, float] | None, info: ValidationInfo) -> tuple[float, float] | None:
        if value is None:
            return None
        low, high = _ordered_range(value)
        if info.field_name == "hue" and (low < -0.5 or high > 0.5):
            raise ValueError("hue shifts must lie within [-0.5, 0.5]")
        if info.field_name != "hue" and low < 0:
            raise ValueError(f"{info.field_name} factors must be >= 0")
        return value


class GaussianNoiseAug(Strict):
    kind: Literal["gaussian_noise"] = "gaussian_noise"
    p: Probability = Field(0.0, description="Probability of adding Gaussian noise.")
    std_range: tuple[float, float] = Field(
        (0.01, 0.05), description="Range of the noise standard deviation on [0, 1] pixel values."
    )

    _order = field_validator("std_range")(_non_negative_range)


class MotionBlurAug(Strict):
    kind: Literal["motion_blur"] = "motion_blur"
    p: Probability = Field(0.0, description="Probability of a linear motion blur.")
    kernel_limit: int = Field(7, ge=3, description="Largest blur kernel size (odd sizes from 3 up to this).")


class GammaAug(Strict):
    kind: Literal["gamma"] = "gamma"
    p: Probability = Field(0.0, description="Probability of a gamma change.")
    gamma_range: tuple[float, float] = Field((0.8, 1.2), description="Range of the gamma exponent.")

    _order = field_validator("gamma_range")(_positive_range)


class GrayscaleAug(Strict):
    kind: Literal["grayscale"] = "grayscale"
    p: Probability = Field(0.0, description="Probability of turning the image grey (channels are kept).")
    method: Literal["weighted", "average"] = Field(
        "weighted", description="weighted: ITU-R 601 luma; average: plain channel mean."
    )


class CompressionAug(Strict):
    kind: Literal["compression"] = "compression"
    p: Probability = Field(0.0, description="Probability of a lossy re-encoding.")
    format: Literal["jpeg", "webp"] = Field("jpeg", description="Codec used for the re-encoding.")
    quality_range: tuple[int, int] = Field((50, 95), description="Range of the encoder quality (1-100).")

    _order = field_validator("quality_range")(_ordered_range)

    @field_validator("quality_range")
    @classmethod
    def _quality(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 1 or value[1] > 100:
            raise ValueError("quality must lie within 1..100")
        return value


PixelAugmentation = Annotated[
    ColorJitterAug | GaussianNoiseAug | MotionBlurAug | GammaAug | GrayscaleAug | CompressionAug,
    Field(discriminator="kind"),
]


class InputAugmentations(Strict):
    """Applied to the input image only, after the joint augmentations."""

    color_jitter: ColorJitterAug = Field(ColorJitterAug(), description="Colour jitter of the input.")
    gaussian_noise: GaussianNoiseAug = Field(GaussianNoiseAug(), description="Gaussian noise on the input.")
    motion_blur: MotionBlurAug = Field(MotionBlurAug(), description="Motion blur of the input.")
    gamma: GammaAug = Field(GammaAug(), description="Gamma change of the input.")
    grayscale: GrayscaleAug = Field(GrayscaleAug(), description="Grey conversion of the input.")
    compression: CompressionAug = Field(CompressionAug(), description="JPEG/WebP artefacts on the input.")


class Augmentations(Strict):
    joint: JointAugmentations = Field(JointAugmentations(), description="Same random parameters on both images.")
    input: InputAugmentations = Field(InputAugmentations(), description="Input image only.")
    target: list[PixelAugmentation] = Field(
        default_factory=list,
        description="Target image only: a list of pixel augmentations, each with a `kind` "
        "(color_jitter, gaussian_noise, motion_blur, gamma, grayscale, compression). Empty by default.",
    )


# ---------------------------------------------------------------- data


class DataSettings(Strict):
    root: Path = Field(Path("data/sample"), description="Dataset root holding train/, val/ and optional test/.")
    layout: Literal["auto", "aligned", "folders"] = Field(
        "auto",
        description="aligned: each file is A left | B right; folders: SPLIT/A and SPLIT/B matched by "
        "file name; auto: folders when SPLIT/A exists, aligned otherwise.",
    )
    direction: Literal["AtoB", "BtoA"] = Field("AtoB", description="AtoB: A is the input and B the target.")
    input_channels: Literal[1, 3] = Field(3, description="Channels of the input image (1 = L, 3 = RGB).")
    output_channels: Literal[1, 3] = Field(3, description="Channels of the target/generated image.")
    load_size: int = Field(286, ge=8, description="Train images are resized (bicubic) to this square size.")
    crop_size: int = Field(256, ge=8, description="Random crop size for training; val/test images are resized to it.")
    batch_size: int = Field(
        1,
        ge=1,
        description=(
            "Images per training step (under torchrun, shared by the processes). Raising it speeds up an epoch on a"
            " GPU and costs memory; pix2pix used 1, and with instance norm larger batches change the results."
        ),
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = load in the main process).")
    augment: Augmentations = Field(Augmentations(), description="Training augmentations.")
    loader: Literal["auto", "workers", "device"] = Field(
        "auto",
        description="workers: decode, resize, crop and augment each sample with PIL/torchvision in DataLoader "
        "workers (every augmentation); device: decode and resize each image once into a uint8 cache, then cut "
        "the random crops and flips of a whole batch on the training device (only hflip and vflip); auto: "
        "device on CUDA when no other augmentation is on, workers otherwise.",
    )
    cache_dir: Path = Field(
        Path(".cache/decoded"),
        description="Where the device loader keeps a decoded split too big for memory (memory-mapped, keyed by "
        "the dataset's files and the load size; no DVC output, in the disk report).",
    )
    cache_memory_gb: float = Field(
        8.0, ge=0.0, description="The device loader keeps a decoded split up to this size in memory, else on disk."
    )


def cpu_only_augmentations(augment: Augmentations) -> list[str]:
    """The enabled augmentations that the device loader does not do (all but hflip and vflip)."""
    joint = [f"augment.joint.{name}" for name, spec in augment.joint if name not in ("hflip", "vflip") and spec.p > 0]
    pixel = [f"augment.input.{name}" for name, spec in augment.input if spec.p > 0]
    return joint + pixel + [f"augment.target[{i}]" for i, spec in enumerate(augment.target) if spec.p > 0]


# ---------------------------------------------------------------- models

Norm = Literal["instance", "batch", "none"]


class GeneratorSettings(Strict):
    features: int = Field(
        64,
        ge=1,
        description=(
            "Channels of the first layer (doubles per level up to the cap). Raising it makes G more capable and "
            "each step slower and larger (compute and weights grow with its square); 64 is pix2pix."
        ),
    )
    n_downs: int = Field(
        6,
        ge=0,
        le=12,
        description="Down layers between the first layer and the 1x1 bottleneck (6 = pix2pix unet_256 "
        "depth). The crop must be a multiple of 2^(n_downs + 2).",
    )
    channel_cap: int = Field(
        8,
        ge=1,
        description=(
            "No layer has more than channel_cap x features channels; lowering it shrinks the deep layers, where "
            "most of the weights are."
        ),
    )
    block: Literal["plain", "residual"] = Field(
        "plain",
        description=(
            "UNet block type: plain (pix2pix: conv, norm, activation) or residual (each block adds its input back: "
            "a little slower, often steadier on deep generators)."
        ),
    )
    upsample: Literal["transposed", "bilinear"] = Field(
        "transposed", description="transposed: 4x4 transposed conv; bilinear: bilinear x2 + 3x3 conv."
    )
    norm: Norm = Field("instance", description="Normalisation layer (instance has no affine parameters).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout rate in the deepest up blocks, training only.")
    dropout_blocks: int = Field(3, ge=0, description="How many of the deepest up blocks use dropout.")

    @property
    def side_multiple(self) -> int:
        """Every input side must be a multiple of this: each of n_downs + 2 layers halves it."""
        return 2 ** (self.n_downs + 2)


class DiscriminatorSettings(Strict):
    features: int = Field(64, ge=1, description="Channels of the first layer.")
    n_layers: int = Field(
        3,
        ge=1,
        le=12,
        description="Stride-2 layers after the first: 3 is the classic 70x70 PatchGAN (the reference "
        "toolbox calls this n_layers 4).",
    )
    norm: Norm = Field("instance", description="Normalisation layer.")


class ModelSettings(Strict):
    generator: GeneratorSettings = Field(GeneratorSettings(), description="UNet generator.")
    discriminator: DiscriminatorSettings = Field(DiscriminatorSettings(), description="PatchGAN discriminator.")


# ---------------------------------------------------------------- schedules and losses

LossName = Literal["gan", "l1", "l2", "sobel", "laplacian", "vgg"]
LOSS_NAMES: tuple[LossName, ...] = get_args(LossName)
"""The generator's loss terms, in the order of every table and log."""


class LRSchedule(Strict):
    epochs: int = Field(
        100,
        ge=0,
        description=(
            "Epochs at the initial learning rate. The run trains epochs + epochs_decay epochs in all; raising it "
            "trains longer at full speed."
        ),
    )
    epochs_decay: int = Field(
        100,
        ge=0,
        description=(
            "Epochs after `epochs` over which the learning rate moves linearly from initial to target (0: no decay)."
        ),
    )
    initial: float = Field(
        2e-4,
        ge=0.0,
        description=(
            "Learning rate of Adam for the first `epochs` epochs. Raising it learns faster and risks divergence (a "
            "diverged run is not registered); pix2pix used 0.0002."
        ),
    )
    target: float = Field(0.0, ge=0.0, description="Learning rate at the end of the decay (0 as in pix2pix).")
    beta1: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description=(
            "Adam beta1 (beta2 is 0.999): 0.5 (pix2pix) reacts faster to the changing adversarial gradients than "
            "Adam's usual 0.9."
        ),
    )


class WeightSchedule(Strict):
    kind: Literal["linear", "exponential"] = Field(
        "linear", description="linear interpolation, or exponential (geometric; both weights must be > 0)."
    )
    initial: float = Field(ge=0.0, description="Weight up to and at the start epoch.")
    target: float = Field(ge=0.0, description="Weight at and after the end epoch.")
    start_epoch: int = Field(ge=1, description="First epoch of the change (1-based).")
    end_epoch: int = Field(ge=1, description="Epoch at which the target is reached.")


class LossSettings(Strict):
    gan_mode: Literal["vanilla", "lsgan"] = Field(
        "vanilla", description="vanilla: BCE-with-logits (non-saturating); lsgan: MSE against 1/0."
    )
    gan: float = Field(
        1.0,
        ge=0.0,
        description=(
            "Weight of the adversarial term of G: what makes outputs sharp and plausible; raising it relative to l1"
            " gives crisper, less faithful images and less stable training."
        ),
    )
    l1: float = Field(
        100.0,
        ge=0.0,
        description=(
            "Weight of mean |G(x) - y|: keeps outputs close to the target pixel for pixel; raising it gives "
            "faithful but blurrier images (pix2pix used 100)."
        ),
    )
    l2: float = Field(
        0.0,
        ge=0.0,
        description="Weight of mean (G(x) - y)^2: like l1, punishes large errors more and blurs more (0: off).",
    )
    sobel: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of the L1 distance of Sobel gradient magnitudes: asks for the target's edges where they are; "
            "raising it sharpens edges and can add halos (0: off)."
        ),
    )
    laplacian: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of the L1 distance of Laplacian responses: asks for the target's fine detail and texture; "
            "sensitive to noise (0: off)."
        ),
    )
    vgg: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of the VGG19 perceptual L1 (relu1_2, relu2_2, relu3_3): outputs that look alike to a "
            "classifier, textures over exact pixels. Costs a VGG19 forward and backward per step and needs its "
            "weights (vgg_weights) (0: off)."
        ),
    )
    vgg_normalize: Literal["imagenet", "raw"] = Field(
        "imagenet", description="imagenet: map [-1, 1] to ImageNet normalisation before VGG; raw: feed as is."
    )
    vgg_weights: Path | None = Field(
        None, description="Local VGG19 ImageNet weights file; when null the torch hub cache is used."
    )
    schedules: dict[LossName, WeightSchedule] = Field(
        default_factory=dict,
        description="Optional per-loss weight schedules by loss name; a scheduled loss ignores its fixed weight.",
    )


class LoggingSettings(Strict):
    log_losses: bool = Field(
        True,
        description=(
            "Keep every iteration's loss values and write them to loss_log.csv (for `nectargan loss-graphs`); off "
            "saves a little time and disk, the per-epoch means stay."
        ),
    )
    dump_frequency: int = Field(
        5,
        ge=1,
        description=(
            "Every how many epochs the cached values are appended to the loss log (and at the end or on a stop). "
            "Lower it to see the log grow sooner; each write costs a file append."
        ),
    )
    progress_every: int = Field(
        20, ge=1, description="Steps between live-loss reads for the progress bar (each read syncs with the device)."
    )


class TrainSettings(Strict):
    continue_train: bool = Field(
        False,
        description=(
            "Continue the run in train.output_dir from its checkpoints (the same MLflow run, bit for bit where the "
            "uninterrupted run would be); refused when there is nothing to continue. To continue from the registry,"
            " use continue_from."
        ),
    )
    load_epoch: int | Literal["latest"] = Field(
        "latest",
        description=(
            "Which checkpoint a continue loads: latest (checkpoints/latest.pt) or an epoch number whose full "
            "snapshot is kept (train.snapshot: full)."
        ),
    )
    continue_from: str | None = Field(
        None,
        description="A registered checkpoint (models:/NAME@ALIAS or models:/NAME/VERSION) or a local "
        "checkpoint path to continue from.",
    )
    generator: LRSchedule = Field(LRSchedule(), description="Generator learning-rate schedule.")
    discriminator: LRSchedule = Field(LRSchedule(), description="Discriminator learning-rate schedule.")
    separate_schedules: bool = Field(
        False,
        description="When false the discriminator uses the generator's epochs, epochs_decay, initial and "
        "target (its beta1 stays its own).",
    )
    loss: LossSettings = Field(LossSettings(), description="Loss weights.")
    output_dir: Path = Field(
        Path("outputs/train"), description="Where checkpoints/, examples/, the loss log and epoch table are written."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="Training processes on this machine (one per GPU): above 1, `nectargan train` starts them "
        "through torchrun (DistributedDataParallel); data.batch_size is the global batch they share.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: bfloat16 autocast; auto: bf16 on CUDA, fp32 on CPU."
    )
    channels_last: bool = Field(False, description="Run the networks in channels_last memory format.")
    compile: bool = Field(
        False,
        description="torch.compile G and D (inductor): faster steps after a compile of tens of seconds at the "
        "start of each process; the losses agree with eager ones to float rounding, not bit for bit.",
    )
    checkpoint_every: int = Field(
        5,
        ge=1,
        description="Every N epochs (and at the last) the one rolling full state checkpoints/latest.pt is "
        "replaced and a snapshot snapshots/epoch_NNNN.pt is written.",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description=(
            "How many of the newest snapshots stay on disk; older ones are deleted. Raising it keeps more epochs to"
            " go back to and costs their disk (see `nectargan disk`)."
        ),
    )
    snapshot: Literal["generator", "networks", "full"] = Field(
        "generator",
        description="What a snapshot holds: generator weights (for predict, evaluate, export and warm starts), "
        "networks (G and D weights), or full (the whole state, so training can also continue from it).",
    )
    snapshot_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "bf16", description="Stored precision of the weights in generator/networks snapshots (full ones are fp32)."
    )
    diverged_above: float | None = Field(
        1e4,
        gt=0,
        description="A final-epoch mean loss of G or D above this means training diverged: the run and its "
        "outputs are kept, but it is not registered and the alias does not move (null: no bound).",
    )
    warm_start: Path | None = Field(
        None,
        description="A checkpoint or snapshot whose network weights start a fresh run at epoch 1 (optimizers "
        "start anew; D starts fresh when the file holds only G). Not with continue_train.",
    )
    examples_every: int = Field(1, ge=1, description="Save example strips every N epochs (and at the last).")
    validate_every: int = Field(
        1,
        ge=0,
        description="Every N epochs (and at the last), L1, PSNR and SSIM of G on the val split with fixed crops: "
        "val/ metrics in MLflow and val_ columns in the epoch table, comparable across loss weightings (0: never).",
    )
    select_by: Literal["val/l1", "val/psnr", "val/ssim"] | None = Field(
        None,
        description="Keep the best validated epoch by this metric in snapshots/best.pt; evaluation, examples, "
        "export and the registered model's weights use it (the full state for continuing stays the newest).",
    )
    early_stop_patience: int | None = Field(
        None, ge=1, description="Stop when select_by (smoothed) has not improved for this many epochs (null: never)."
    )
    early_stop_window: int = Field(1, ge=1, description="Validations averaged for early stopping (1: no smoothing).")
    num_examples: int = Field(4, ge=0, description="Fixed validation samples shown as input | generated | target.")

    @field_validator("load_epoch", mode="before")
    @classmethod
    def _positive_epoch(cls, value: Any) -> Any:
        """One message for any wrong value (the union would give one per member)."""
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if value == "latest" or (type(value) is int and value >= 1):
            return value
        raise ValueError("load_epoch must be a 1-based epoch number or 'latest'")

    @property
    def total_epochs(self) -> int:
        return self.generator.epochs + self.generator.epochs_decay

    @property
    def discriminator_schedule(self) -> LRSchedule:
        """The schedule D really follows, honouring ``separate_schedules``."""
        if self.separate_schedules:
            return self.discriminator
        return self.generator.model_copy(update={"beta1": self.discriminator.beta1})


class SampleDataSettings(Strict):
    """Integers are strict (no "0" or 64.0): these keys are only ever written by hand."""

    out: Path = Field(Path("data/sample"), description="Where `nectargan sample-data` writes the bundled dataset.")
    size: int = Field(
        128, ge=32, multiple_of=16, strict=True, description="Side of each half image of the sample pairs, pixels."
    )
    train: int = Field(200, ge=1, strict=True, description="Sample pairs in train/.")
    val: int = Field(16, ge=1, strict=True, description="Sample pairs in val/.")
    test: int = Field(16, ge=1, strict=True, description="Sample pairs in test/.")
    seed: int = Field(
        0, ge=0, strict=True, description="Seed of the procedural generator (the data is identical for a seed)."
    )


def refuse_credentials(uri: str, source: str) -> None:
    """A URI is logged as a param and printed: its user and password would be too."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(
            f"{source} holds credentials ({parts.scheme}://USER:PASSWORD@...); remove them and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a database: PGPASSWORD) in the environment "
            "or a git-ignored .env"
        )


class TrackingSettings(Strict):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $NECTARGAN_TRACKING_URI when set, else the embedded default, an "
        "SQLite file mlflow.db in the project folder (absolute path; a queued DVC experiment's temporary copy logs "
        "into the project's). A server URL such as http://127.0.0.1:5000 also works. Never credentials: they come "
        "from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or PGPASSWORD) in the environment.",
    )
    experiment: str = Field("nectargan", min_length=1, description="MLflow experiment that holds the runs.")
    registered_model: str = Field(
        "nectargan-generator", min_length=1, description="Registry name; each run's final checkpoint is a version."
    )
    alias: str = Field(
        "current",
        min_length=1,
        description="Registry alias moved to each new version ('latest' is MLflow's own: always the newest).",
    )
    log_checkpoints: Literal["none", "final", "all"] = Field(
        "final",
        description="Checkpoints in MLflow: final = the registered model and, beside it, the final full state "
        "(what continue_from needs); none = the same, and nothing for a run that ends without a model; all = "
        "also every snapshot.",
    )
    system_metrics: bool = Field(True, description="Record CPU/GPU/memory use as MLflow system metrics.")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_credentials(value, "it")
            urlsplit(value).port  # noqa: B018 - raises for a port that is no number or out of range
        return value

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() == "latest":
            raise ValueError("'latest' is reserved by MLflow (models:/NAME@latest is always the newest version)")
        return value


class EvaluateSettings(Strict):
    samples: int = Field(3, ge=1, description="Best and worst images shown per metric in the evaluation report.")
    lpips_weights: Path | None = Field(
        None,
        description="torchvision AlexNet ImageNet weights for LPIPS (alexnet-owt-7be5be79.pth); null = the torch "
        "hub cache. LPIPS is skipped when neither has them.",
    )
    fid_weights: Path | None = Field(
        None,
        description="torch-fidelity Inception weights for FID (weights-inception-2015-12-05-6726825d.pth); null = "
        "the torch hub cache. FID is skipped when neither has them.",
    )


class OutputSettings(Strict):
    """Folders of the stages after training (the training run itself lives in ``train.output_dir``)."""

    validation: Path = Field(Path("outputs/validation"), description="Dataset validation report (stage validate).")
    examples: Path = Field(Path("outputs/examples"), description="Example strips of the final checkpoint.")
    eval: Path = Field(Path("outputs/eval"), description="Evaluation table, metrics and report.")
    export: Path = Field(Path("outputs/export"), description="The ONNX generator and its parity check.")
    review: Path = Field(Path("outputs/review"), description="Montage of example strips and loss graphs.")
    compare: Path = Field(Path("outputs/compare"), description="Leaderboard and side-by-side image of runs.")
    predict: Path = Field(Path("outputs/predict"), description="Default folder of `nectargan predict`.")
    sweeps: Path = Field(Path("outputs/sweeps"), description="`nectargan sweep`: a folder per sweep, a run per child.")


class Settings(Strict):
    seed: int = Field(0, ge=0, description="Seed for every random number generator.")
    data: DataSettings = Field(DataSettings(), description="Dataset and preprocessing.")
    model: ModelSettings = Field(ModelSettings(), description="Generator and discriminator.")
    train: TrainSettings = Field(TrainSettings(), description="Schedules, losses and continue training.")
    logging: LoggingSettings = Field(LoggingSettings(), description="Loss logging.")
    tracking: TrackingSettings = Field(TrackingSettings(), description="MLflow tracking and model registry.")
    sample: SampleDataSettings = Field(SampleDataSettings(), description="The generated sample dataset.")
    evaluate: EvaluateSettings = Field(EvaluateSettings(), description="Evaluation of the final checkpoint.")
    outputs: OutputSettings = Field(OutputSettings(), description="Output folders of the stages after training.")


# ---------------------------------------------------------------- loading


def _cross_field_problems(settings: Settings) -> list[str]:
    """Checks that involve several keys and so cannot live on one field."""
    problems = []
    data, gen = settings.data, settings.model.generator
    if data.crop_size > data.load_size:
        problems.append(
            f"data.crop_size ({data.crop_size}) is larger than data.load_size ({data.load_size}); "
            "make load_size >= crop_size"
        )
    cpu_only = cpu_only_augmentations(data.augment)
    if data.loader == "device" and cpu_only:
        problems.append(
            f"data.loader 'device' cuts crops and flips only; {', '.join(cpu_only)} run in CPU workers: set "
            "data.loader: workers (or auto), or turn those augmentations off"
        )
    multiple = gen.side_multiple
    if data.crop_size % multiple:
        problems.append(
            f"data.crop_size ({data.crop_size}) must be a multiple of {multiple} for "
            f"model.generator.n_downs={gen.n_downs} (2^(n_downs+2)); lower n_downs or change the crop"
        )
    min_side = 3 * 2**settings.model.discriminator.n_layers
    if data.crop_size < min_side:
        problems.append(
            f"data.crop_size ({data.crop_size}) is too small for model.discriminator.n_layers="
            f"{settings.model.discriminator.n_layers}: the PatchGAN needs at least {min_side}; lower n_layers"
        )
    if gen.dropout_blocks > gen.n_downs + 1:
        problems.append(
            f"model.generator.dropout_blocks ({gen.dropout_blocks}) exceeds the {gen.n_downs + 1} up blocks "
            f"of model.generator.n_downs={gen.n_downs} that can hold dropout; lower dropout_blocks"
        )
    for name, sched in settings.train.loss.schedules.items():
        key = f"train.loss.schedules.{name}"
        if sched.end_epoch < sched.start_epoch:
            problems.append(f"{key}.end_epoch ({sched.end_epoch}) is before start_epoch ({sched.start_epoch})")
        if sched.kind == "exponential" and (sched.initial <= 0 or sched.target <= 0):
            problems.append(f"{key}: an exponential schedule needs initial > 0 and target > 0")
    if settings.train.continue_from and not settings.train.continue_train:
        problems.append(
            "train.continue_from is set but train.continue_train is false; set continue_train: true to continue "
            "(checkpoints are never picked up silently)"
        )
    train = settings.train
    if train.warm_start is not None and train.continue_train:
        problems.append(
            "train.warm_start starts a fresh run from a file's weights, train.continue_train continues one; "
            "set only one of them"
        )
    if settings.train.total_epochs < 1:
        problems.append("train.generator.epochs + train.generator.epochs_decay must be at least 1")
    if train.select_by and not train.validate_every:
        problems.append("train.select_by needs validation: set train.validate_every to 1 or more")
    if train.early_stop_patience and not train.select_by:
        problems.append("train.early_stop_patience needs train.select_by (the metric it watches), e.g. val/psnr")
    if settings.data.batch_size % train.nproc_per_node:
        problems.append(
            f"data.batch_size ({settings.data.batch_size}) is the global batch and must divide evenly over "
            f"train.nproc_per_node ({train.nproc_per_node}) processes"
        )
    return problems


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model reached by following ``loc`` from Settings (for suggestions)."""
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def leaf_setting(dotted: str) -> Any:
    """The type of the single setting ``dotted`` names (a search axis must be one); ValueError naming
    the key, with a close match, when it names no setting or a whole group."""
    model: Any = Settings
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean '{'.'.join([*parts[:depth], close[0]])}'?" if close else ""
            raise ValueError(f"{dotted}: no such setting{hint}")
        model = fields[part].annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        raise ValueError(f"{dotted}: a group of settings, not one setting; name a key inside it")
    return model


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 3
"""Echoed values are cut short: an alias bomb's list or a huge string is not printed whole."""


def _key_part(part: object) -> str:
    text = str(part)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(_key_part(p) for p in loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{key}: unknown key.{hint} Known keys here: {', '.join(allowed)}"
    return f"{key}: {error['msg']} (got {_SHORT.repr(_masked(error.get('input')))})"


def _masked(value: object) -> object:
    """A URI's user part (a user and password, or a token) is never echoed back."""
    if not isinstance(value, str) or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.username or parts.password:
        return parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[1]}").geturl()
    return value


def _apply_override(tree: dict[str, Any], override: str) -> None:
    source = f"-s {_SHORT.repr(override)}"
    dotted, eq, raw = override.partition("=")
    dotted = dotted.strip()
    if not eq or not all(dotted.split(".")):
        raise SettingsError(source, ["an override must look like key.sub=value (e.g. train.loss.l1=50)"])
    try:
        value = yaml.load(raw, Loader=ParamsLoader)
    except yaml.YAMLError as exc:
        raise SettingsError(
            source, [f"{dotted}: the value is {yaml_problem(exc, raw)}; quote it if it is text"]
        ) from None
    _set_dotted(tree, dotted, value)


def _drop(tree: Any, loc: tuple[Any, ...]) -> None:
    """Remove the deepest existing key along ``loc`` (so that its default applies)."""
    for depth in range(len(loc), 0, -1):
        node = tree
        for part in loc[: depth - 1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and loc[depth - 1] in node:
            del node[loc[depth - 1]]
            return


def settings_from_dict(tree: dict[str, Any], source: str = "<settings>") -> Settings:
    """Validate a nested dict; raise SettingsError listing every problem."""
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        # Report cross-field conflicts too: validate again with the bad keys at their defaults.
        # A conflict that names a bad key is about its default, not about what the file says: left out.
        pruned = copy.deepcopy(tree)
        for error in exc.errors():
            _drop(pruned, tuple(error["loc"]))
        bad = [re.compile(rf"(?<![\w.]){re.escape('.'.join(map(str, e['loc'])))}(?!\w)") for e in exc.errors()]
        with contextlib.suppress(ValidationError):
            cross = _cross_field_problems(Settings.model_validate(pruned))
            problems += [p for p in cross if not any(key.search(p) for key in bad)]
        raise SettingsError(source, problems) from None
    problems = _cross_field_problems(settings)
    if problems:
        raise SettingsError(source, problems)
    return settings


def load_settings(path: Path | str = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Read ``path`` (a YAML params file), apply ``key.sub=value`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(str(path), ["the params file does not exist; pass --params PATH or create it"])
    try:
        text = path.read_text()
        tree = yaml.load(text, Loader=ParamsLoader)
    except yaml.YAMLError as exc:
        raise SettingsError(str(path), [yaml_problem(exc, text)]) from None
    except UnicodeDecodeError:
        raise SettingsError(str(path), ["not a text file (not UTF-8); pass the YAML params file"]) from None
    if tree is None:
        raise SettingsError(
            str(path), ["the params file is empty; copy the project's params.yaml (every key with its default)"]
        )
    if not isinstance(tree, dict):
        raise SettingsError(str(path), ["the top level must be a mapping of setting groups"])
    for override in overrides:
        _apply_override(tree, override)
    return settings_from_dict(tree, str(path))


def flatten_dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"dotted.key": leaf}; an empty dict is a leaf, so it still shows."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def short_keys(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Each dotted key by its shortest unique tail: ``train.loss.l1`` -> ``l1`` (unless another key ends so)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        out[key] = tail
    return out


def changes_label(changes: dict[str, Any]) -> str:
    """A run's name for the settings it changes (MLflow's random names say nothing): ``l1=50 sobel=0``,
    each key by its shortest unique tail, a float to 3 significant digits (an Optuna 87.2345 is 87.2)."""
    names = short_keys(list(changes))
    return " ".join(f"{names[key]}={_short_number(value)}" for key, value in changes.items())


def _short_number(value: Any) -> str:
    return f"{float(f'{value:.3g}'):g}" if isinstance(value, float) else str(value)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part, {})
        if not isinstance(child, dict):
            raise SettingsError(dotted, [f"'{part}' is a value, not a group of settings"])
        node[part] = node = dict(child)  # a copy: a YAML alias shares its mapping with the anchor's key
    node[leaf] = value


def with_changes(settings: Settings, changes: dict[str, Any], source: str = "<changed settings>") -> Settings:
    """A copy with ``{"dotted.key": value}`` changes, validated like ``params.yaml`` (cross-field checks too)."""
    tree = settings.model_dump(mode="json")
    for dotted, value in changes.items():
        _set_dotted(tree, dotted, value.as_posix() if isinstance(value, Path) else value)
    return settings_from_dict(tree, source)


def divergence_changes(settings: Settings) -> str:
    """The learning-rate and loss-weight settings that differ from the defaults, as a sentence for a
    diverged or NaN run: the user sees which of their changes to undo ('' when none differ)."""
    keys = ["train.generator.initial", "train.generator.target", "train.generator.beta1", "train.discriminator.beta1"]
    if settings.train.separate_schedules:
        keys += ["train.discriminator.initial", "train.discriminator.target"]
    keys += [f"train.loss.{name}" for name in ("gan", "l1", "l2", "sobel", "laplacian", "vgg")]
    now = flatten_dotted(settings.model_dump(mode="json"))
    default = flatten_dotted(Settings().model_dump(mode="json"))
    changed = [f"{key}={now[key]:g} (default {default[key]:g})" for key in keys if now[key] != default[key]]
    changed += [f"train.loss.schedules.{name}" for name in settings.train.loss.schedules]
    return f" Settings changed from the defaults: {', '.join(changed)}." if changed else ""


def _path_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every Path-valued setting (optional ones included)."""
    keys = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _path_keys(field.annotation, f"{prefix}{name}.")
        elif Path in (field.annotation, *get_args(field.annotation)):
            keys.append(prefix + name)
    return keys


PATH_KEYS = tuple(_path_keys(Settings))
"""Every setting that names a file or folder, relative to the project folder unless absolute."""


def anchored(settings: Settings, base: Path) -> Settings:
    """A copy with relative paths made absolute against ``base``, the project folder.

    DVC and the CLI run in the project folder; a Prefect worker may not.
    """
    flat = flatten_dotted(settings.model_dump(mode="json"))
    changes: dict[str, Any] = {key: str(base / flat[key]) for key in PATH_KEYS if flat[key] is not None}
    source = settings.train.continue_from
    if source and not source.startswith("models:/"):
        changes["train.continue_from"] = str(base / source)
    return with_changes(settings, changes)
