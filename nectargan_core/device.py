"""Which device and precision a run uses: shared by training and inference, decided in one place."""

from __future__ import annotations

import torch

from nectargan_core.settings import TrainSettings


def resolve_device(cfg: TrainSettings) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def autocast_dtype(cfg: TrainSettings, device: torch.device) -> torch.dtype | None:
    """bf16 autocast, or None for plain fp32 ('auto' = bf16 on CUDA only)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None
