"""The best epoch by a validation metric, and early stopping on it.

With ``train.select_by`` (``val/psnr``, say) every validation that beats the best so far replaces
``snapshots/best.pt``; evaluation, the examples, the ONNX export and the registered model's
weights then use that epoch, while the full state that continues training stays the newest one.
With ``train.early_stop_patience`` training stops once the metric, smoothed over the last
``train.early_stop_window`` validations, has not improved for that many epochs (Lupión et al.
2022 stop pix2pix when PSNR has not improved for 50 epochs). The state lives in every full
checkpoint, so a continue decides exactly as the run that never stopped would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nectargan_core.losses.metrics import HIGHER_IS_BETTER
from nectargan_core.metric_names import val_metric


@dataclass
class Selection:
    metric: str  # "psnr", without the val/ prefix
    patience: int | None = None
    window: int = 1
    best_epoch: int | None = None
    best_value: float | None = None
    best_smoothed: float | None = None
    best_smoothed_epoch: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return val_metric(self.metric).label

    @property
    def _sign(self) -> float:
        return 1.0 if HIGHER_IS_BETTER[self.metric] else -1.0

    def update(self, epoch: int, value: float) -> bool:
        """Record a validation; True when it is the new best epoch."""
        self.history.append((epoch, value))
        recent = [v for _, v in self.history[-self.window :]]
        smoothed = sum(recent) / len(recent)
        if self.best_smoothed is None or self._sign * smoothed > self._sign * self.best_smoothed:
            self.best_smoothed, self.best_smoothed_epoch = smoothed, epoch
        if self.best_value is None or self._sign * value > self._sign * self.best_value:
            self.best_epoch, self.best_value = epoch, value
            return True
        return False

    def stop_reason(self, epoch: int) -> str | None:
        """Why training stops after ``epoch`` (None: go on)."""
        if self.patience is None or self.best_smoothed_epoch is None:
            return None
        if epoch - self.best_smoothed_epoch < self.patience:
            return None
        return (
            f"stopped early after epoch {epoch}: {self.label} (smoothed over {self.window} validation(s)) "
            f"has not improved for {epoch - self.best_smoothed_epoch} epochs (train.early_stop_patience "
            f"{self.patience}); best {self.label} {self.best_value:.4f} at epoch {self.best_epoch}"
        )

    def why(self) -> str:
        return f"best {self.label} ({self.best_value:.4f}) of the validated epochs (train.select_by)"

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def restore(cls, metric: str, patience: int | None, window: int, saved: dict[str, Any] | None) -> Selection:
        """A fresh selection, or the one a checkpoint saved (same metric), with today's patience."""
        if not saved or saved["metric"] != metric:
            return cls(metric, patience, window)
        kept = {k: v for k, v in saved.items() if k not in ("metric", "patience", "window", "history")}
        return cls(metric, patience, window, **kept, history=[tuple(h) for h in saved["history"]])
