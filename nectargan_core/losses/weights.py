"""Loss weights per epoch: fixed values, or linear/exponential schedules between two epochs."""

from __future__ import annotations

from typing import TypeVar

import torch

from nectargan_core.settings import LOSS_NAMES, LossSettings, WeightSchedule

Value = TypeVar("Value", float, torch.Tensor)


def weighted(value: Value, weight: float) -> Value:
    """A loss term as it counts toward G's total: the one place a weight is applied."""
    return value * weight


def scheduled_weight(schedule: WeightSchedule, epoch: int) -> float:
    """Weight at 1-based ``epoch``: initial before start, target from end on, interpolated between.

    The end epoch wins over the start epoch, so ``start_epoch == end_epoch`` is a step to the target there.
    """
    if epoch >= schedule.end_epoch:
        return schedule.target
    if epoch <= schedule.start_epoch:
        return schedule.initial
    t = (epoch - schedule.start_epoch) / (schedule.end_epoch - schedule.start_epoch)
    if schedule.kind == "linear":
        return schedule.initial + t * (schedule.target - schedule.initial)
    return schedule.initial * (schedule.target / schedule.initial) ** t


def loss_weights(cfg: LossSettings, epoch: int) -> dict[str, float]:
    """Every loss's weight at ``epoch``; a loss runs that epoch if and only if its weight is > 0."""
    weights = {name: float(getattr(cfg, name)) for name in LOSS_NAMES}
    for name, schedule in cfg.schedules.items():
        weights[name] = scheduled_weight(schedule, epoch)
    return weights


def ever_active(cfg: LossSettings, name: str) -> bool:
    """Whether ``name`` has a positive weight at some epoch (decides what must be built up front)."""
    schedule = cfg.schedules.get(name)  # type: ignore[call-overload]
    if schedule is not None:
        return max(schedule.initial, schedule.target) > 0
    return getattr(cfg, name) > 0
