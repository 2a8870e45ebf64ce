"""Per-epoch validation: the val metrics that compare across loss weightings, in the epoch table and MLflow."""

import math

import torch

from nectargan_core.settings import with_changes
from nectargan_core.stages import train_stage
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.trainer import train

from .helpers import epoch_rows, losses, tiny_settings


def test_validation_is_recorded_when_due_and_changes_nothing_of_training(sample_root, tmp_path):
    every = train(tiny_settings(sample_root, tmp_path / "a", **{"generator.epochs": 3, "validate_every": 2}))
    never = train(tiny_settings(sample_root, tmp_path / "b", **{"generator.epochs": 3, "validate_every": 0}))
    rows = epoch_rows(tmp_path / "a")
    assert [bool(row["val_psnr"]) for row in rows] == [False, True, True]  # every 2nd epoch, and the last
    assert all(not row["val_psnr"] for row in epoch_rows(tmp_path / "b"))
    assert losses(rows) == losses(epoch_rows(tmp_path / "b"))  # validation draws no random numbers
    last = every.history[-1].val
    assert set(last) == {"l1", "psnr", "ssim"} and all(math.isfinite(v) for v in last.values())
    assert 0 < last["l1"] < 2 and last["psnr"] > 0 and -1 <= last["ssim"] <= 1
    assert never.history[-1].val == {}


def test_validation_is_the_same_for_the_same_weights(sample_root, tmp_path):
    first = train(tiny_settings(sample_root, tmp_path / "a"))
    second = train(tiny_settings(sample_root, tmp_path / "b"))
    assert [s.val for s in first.history] == [s.val for s in second.history]  # fixed crops, no randomness


def test_val_metrics_reach_mlflow_per_epoch(sample_root, tmp_path):
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train")
    tracker = Tracker.connect(settings.tracking, tmp_path)
    result = train_stage(settings, tracker, tmp_path)
    for key in ("val/l1", "val/psnr", "val/ssim"):
        assert [m.step for m in tracker.client.get_metric_history(result.run_id, key)] == [1, 2], key


def test_lpips_joins_the_validation_when_its_weights_are_local(sample_root, tmp_path):
    from torchvision.models import alexnet

    weights = tmp_path / "alexnet.pth"
    torch.save(alexnet(weights=None).state_dict(), weights)  # random weights: nothing is downloaded
    settings = with_changes(tiny_settings(sample_root, tmp_path / "run"), {"evaluate.lpips_weights": weights})
    result = train(settings)
    assert set(result.history[-1].val) == {"l1", "psnr", "ssim", "lpips"}
    assert all(float(row["val_lpips"]) >= 0 for row in epoch_rows(tmp_path / "run"))
