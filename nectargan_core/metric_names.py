"""Every per-epoch number's name, once, and how each sink spells it.

The epoch table (``epochs.csv``) wants plain column names (``val_psnr``), MLflow groups its keys by
prefix (``val/psnr``), and plots and messages show the MLflow key, so a user finds the same name in
the UI. Add or rename a metric here and every sink follows.
"""

from __future__ import annotations

from dataclasses import dataclass

VAL_METRICS = ("l1", "psnr", "ssim")  # always validated; "lpips" too when its weights are local
VAL_COLUMNS = (*VAL_METRICS, "lpips")
VAL_PREFIX = "val/"


@dataclass(frozen=True)
class Metric:
    """One number logged per epoch: its MLflow key and its epoch-table column."""

    key: str
    column: str

    @property
    def label(self) -> str:
        """What plots and messages call it: the MLflow key."""
        return self.key


def val_metric(name: str) -> Metric:
    """A validation metric (``psnr``): ``val/psnr`` in MLflow, ``val_psnr`` in the table."""
    return Metric(f"{VAL_PREFIX}{name}", f"val_{name}")


def val_name(key: str) -> str:
    """The validation metric a key names (``val/psnr`` -> ``psnr``)."""
    if not key.startswith(VAL_PREFIX):
        raise ValueError(f"{key!r} is not a validation metric (val/...)")
    return key.removeprefix(VAL_PREFIX)


def loss_metric(name: str) -> Metric:
    """A loss term's unweighted epoch mean."""
    return Metric(f"loss/{name}", name)


def weighted_metric(name: str) -> Metric:
    """A loss term's epoch mean times its weight that epoch."""
    return Metric(f"loss/{name}_weighted", f"{name}_weighted")


def weight_metric(name: str) -> Metric:
    """A loss term's weight that epoch."""
    return Metric(f"weight/{name}", f"{name}_weight")


LOSS_D = Metric("loss/d", "loss_d")
LOSS_G = Metric("loss/g", "loss_g")
LR_G = Metric("lr/g", "lr_g")
LR_D = Metric("lr/d", "lr_d")
SECONDS = Metric("epoch_seconds", "seconds")
IMAGES_PER_S = Metric("images_per_s", "images_per_s")
