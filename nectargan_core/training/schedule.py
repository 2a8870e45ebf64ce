"""Learning-rate schedule: constant, then linear towards the target (a warm-up when the target is higher)."""

from __future__ import annotations

import torch

from nectargan_core.settings import LRSchedule


def learning_rate(schedule: LRSchedule, epoch: int) -> float:
    """LR for the whole of 1-based ``epoch``.

    t = clamp((e - E) / (D + 1), 0, 1); lr = lr0 + t * (lrT - lr0). Written as an interpolation,
    not a factor on lr0, so a warm-up (lrT > lr0, even lr0 = 0) rises as it should.
    """
    t = (epoch - schedule.epochs) / (schedule.epochs_decay + 1)
    t = min(max(t, 0.0), 1.0)
    return schedule.initial + t * (schedule.target - schedule.initial)


def apply_learning_rate(optimizer: torch.optim.Optimizer, schedule: LRSchedule, epoch: int) -> float:
    """Set every parameter group's LR for ``epoch``; returns the value set."""
    lr = learning_rate(schedule, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
