"""VGG19 perceptual loss: L1 between features at relu1_2, relu2_2 and relu3_3.

Weights come from a configured local file or the torch hub cache; nothing is ever downloaded,
so a missing file fails before training with instructions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19

# Indices in torchvision's vgg19().features of the ReLUs whose outputs are compared.
_TAPS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsMissing(FileNotFoundError):
    pass


def vgg19_weights_file(configured: Path | None) -> Path:
    """The file to load: the configured one, else torchvision's file name in the hub cache."""
    if configured is not None:
        if not Path(configured).is_file():
            raise VGGWeightsMissing(
                f"train.loss.vgg_weights: {configured} does not exist; point it at a VGG19 ImageNet "
                "state dict (torchvision's vgg19-dcbb9e9d.pth) or set train.loss.vgg to 0."
            )
        return Path(configured)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name
    if not cached.is_file():
        raise VGGWeightsMissing(
            f"train.loss.vgg > 0 needs VGG19 ImageNet weights, and {cached} is missing. Copy "
            f'{cached.name} there (on a machine with internet: python -c "import torchvision; '
            "torchvision.models.vgg19(weights='IMAGENET1K_V1')\"), or set train.loss.vgg_weights to a "
            "local file, or set train.loss.vgg to 0."
        )
    return cached


def load_vgg19_features(weights_file: Path) -> nn.Sequential:
    """VGG19 feature layers up to relu3_3 with pretrained weights, frozen."""
    model = vgg19(weights=None)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not any(key.startswith("features.") for key in state):
        state = {f"features.{key}": value for key, value in state.items()}
    features_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    features = model.features[: _TAPS[-1] + 1]
    features.load_state_dict(features_state, strict=False)
    missing = set(features.state_dict()) - set(features_state)
    if missing:
        raise ValueError(f"{weights_file}: not a VGG19 state dict (missing {sorted(missing)[:3]} ...)")
    return features


class VGGPerceptualLoss(nn.Module):
    """Sum over the three taps of mean |phi(fake) - phi(real)|; fake and real share one batch."""

    def __init__(self, features: nn.Sequential, imagenet_normalize: bool = True) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.imagenet_normalize = imagenet_normalize
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """The feature extractor always stays in eval mode."""
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fake, real.detach()], dim=0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.imagenet_normalize:
            x = ((x + 1) / 2 - self.mean) / self.std
        loss = x.new_zeros(())
        half = fake.shape[0]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                loss = loss + (x[:half] - x[half:]).abs().mean()
        return loss
