"""One pix2pix optimisation step: D first, then G against the updated D, with one G forward.

Kept apart from the epoch loop so that the benchmark times exactly what training runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nectargan_core.distributed import World
from nectargan_core.losses.gan import discriminator_loss
from nectargan_core.losses.objective import GeneratorObjective
from nectargan_core.losses.perceptual import VGGPerceptualLoss, load_vgg19_features, vgg19_weights_file
from nectargan_core.losses.weights import ever_active, loss_weights
from nectargan_core.models import build_discriminator, build_generator
from nectargan_core.settings import LOSS_NAMES, Settings
from nectargan_core.training.schedule import apply_learning_rate

BETA2 = 0.999


@dataclass(frozen=True)
class Losses:
    """D's loss, G's total and each active term of G (unweighted): of one step, or an epoch's mean."""

    d: float
    g: float
    terms: dict[str, float]

    def items(self) -> list[tuple[str, float]]:
        """("D", d), ("G", g), then each term: the order of the loss log and the progress bar."""
        return [("D", self.d), ("G", self.g), *self.terms.items()]

    def first_non_finite(self) -> tuple[str, float] | None:
        return next(((name, value) for name, value in self.items() if not math.isfinite(value)), None)


@dataclass(frozen=True)
class LossLayout:
    """Where each loss sits in the vector a step returns (one device tensor, so one sync reads all)."""

    terms: tuple[str, ...]

    def unpack(self, values: Sequence[float]) -> Losses:
        d, g, *rest = values
        return Losses(d, g, dict(zip(self.terms, rest, strict=True)))


def _build_vgg(settings: Settings) -> VGGPerceptualLoss | None:
    """Loaded up front so a missing weights file fails before the first step."""
    loss = settings.train.loss
    if not ever_active(loss, "vgg"):
        return None
    features = load_vgg19_features(vgg19_weights_file(loss.vgg_weights))
    return VGGPerceptualLoss(features, imagenet_normalize=loss.vgg_normalize == "imagenet")


class GANStep:
    """Holds G, D, their optimisers and the objective; ``__call__`` runs one step on a batch."""

    def __init__(
        self, settings: Settings, device: torch.device, amp_dtype: torch.dtype | None, world: World | None = None
    ) -> None:
        cfg = settings.train
        self.settings = settings
        self.device = device
        self.amp_dtype = amp_dtype
        self.world = world or World()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.generator = build_generator(settings).to(device, memory_format=self.memory_format)
        self.discriminator = build_discriminator(settings).to(device, memory_format=self.memory_format)
        # Under torchrun, G and D each get a DDP wrapper of their own (one over both breaks the two-
        # optimiser step); the wrappers start from rank 0's weights. The plain modules stay the ones
        # that are saved, loaded and run for examples.
        self._g = self._compiled(self._parallel(self.generator))
        self._d = self._compiled(self._parallel(self.discriminator))
        self._d_frozen = self._compiled(self.discriminator)
        fused = device.type == "cuda"  # one kernel for all parameters; CPU has no fused Adam
        self.opt_g = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.generator.initial, betas=(cfg.generator.beta1, BETA2), fused=fused
        )
        d_sched = cfg.discriminator_schedule
        self.opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=d_sched.initial, betas=(d_sched.beta1, BETA2), fused=fused
        )
        vgg = _build_vgg(settings)
        self.objective = GeneratorObjective(cfg.loss, vgg.to(device) if vgg is not None else None)
        self.gan_mode = cfg.loss.gan_mode
        self.weights: dict[str, float] = {}
        self.layout = LossLayout(())
        self.set_epoch(1)

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """train.compile: a compiled caller of the same module (its parameters and state_dict unchanged)."""
        return torch.compile(module) if self.settings.train.compile else module

    def _parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.world.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def set_epoch(self, epoch: int) -> tuple[float, float]:
        """Apply the LR schedules and loss weights of ``epoch``; returns (lr_g, lr_d)."""
        cfg = self.settings.train
        lr_g = apply_learning_rate(self.opt_g, cfg.generator, epoch)
        lr_d = apply_learning_rate(self.opt_d, cfg.discriminator_schedule, epoch)
        self.weights = loss_weights(cfg.loss, epoch)
        self.layout = LossLayout(tuple(name for name in LOSS_NAMES if self.weights[name] > 0))
        return lr_g, lr_d

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step; returns the detached losses on the device, unsynced, laid out as ``self.layout``."""
        with self.autocast():
            fake = self._g(x)

        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            loss_d = discriminator_loss(self._d(x, y), self._d(x, fake.detach()), self.gan_mode)
        loss_d.backward()  # under DDP: D's gradients are averaged over the processes here
        self.opt_d.step()

        # G's step runs D frozen and unwrapped: G's backward needs no D gradients, so D's DDP wrapper
        # (which expects one) stays out of it; G's gradients are averaged by G's wrapper.
        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self._d_frozen(x, fake) if self.weights["gan"] > 0 else None
            total, terms = self.objective(fake, y, self.weights, logits)
        total.backward()
        self.opt_g.step()
        return torch.stack([loss_d.detach(), total.detach(), *(terms[n].detach() for n in self.layout.terms)]).float()

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_weights(self, state: dict[str, Any]) -> None:
        """A warm start: the networks of a checkpoint or snapshot (D only when it holds one), fresh optimisers."""
        self.generator.load_state_dict(state["generator"])
        if "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore networks and optimiser moments; betas follow the current settings."""
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        cfg = self.settings.train
        for opt, beta1 in ((self.opt_g, cfg.generator.beta1), (self.opt_d, cfg.discriminator.beta1)):
            for group in opt.param_groups:
                group["betas"] = (beta1, BETA2)
                group["fused"] = self.device.type == "cuda"  # follows this machine, not the checkpoint's
