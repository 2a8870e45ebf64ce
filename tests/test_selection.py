"""The best validated epoch (train.select_by) and early stopping on it."""

import json

from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.settings import with_changes
from nectargan_core.stages import evaluate_stage, train_stage
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.selection import Selection

from .helpers import epoch_rows, tiny_settings


def test_the_best_and_the_smoothed_best():
    selection = Selection("psnr", patience=2, window=2)
    assert [selection.update(e, v) for e, v in [(1, 10.0), (2, 12.0), (3, 11.0), (4, 11.5)]] == [
        True,
        True,
        False,
        False,
    ]
    assert (selection.best_epoch, selection.best_value) == (2, 12.0)
    assert selection.best_smoothed_epoch == 3  # (12 + 11) / 2 beats (10 + 12) / 2 and (11 + 11.5) / 2
    assert selection.stop_reason(4) is None and "has not improved for 2 epochs" in selection.stop_reason(5)
    lower = Selection("l1")
    assert [lower.update(e, v) for e, v in [(1, 0.3), (2, 0.2), (3, 0.25)]] == [True, True, False]
    again = Selection.restore("psnr", 2, 2, selection.state_dict())
    assert again == selection


def test_the_selected_epoch_is_what_evaluation_and_the_registry_use(sample_root, tmp_path):
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train", select_by="val/l1", **{"generator.epochs": 3})
    settings = with_changes(settings, {"outputs.eval": str(tmp_path / "eval")})
    tracker = Tracker.connect(settings.tracking, tmp_path)
    result = train_stage(settings, tracker, tmp_path)
    rows = epoch_rows(tmp_path / "outputs" / "train")
    best = min(rows, key=lambda row: float(row["val_l1"]))
    best_file = tmp_path / "outputs" / "train" / "snapshots" / "best.pt"
    assert load_checkpoint(best_file)["epoch"] == int(best["epoch"])
    summary = json.loads((tmp_path / "outputs" / "train" / "summary.json").read_text())
    assert summary["selected_epoch"] == int(best["epoch"]) and "val/l1" in summary["selected_why"]
    assert load_checkpoint(result.checkpoint)["epoch"] == 3  # the full state stays the newest
    assert evaluate_stage(settings, tracker).epoch == int(best["epoch"])
    version = tracker.client.get_model_version("nectargan-generator", result.model_version)
    assert version.tags["selected_epoch"] == best["epoch"] and version.tags["selected_by"] == "val/l1"


def test_early_stopping_stops_and_a_continue_only_finishes(sample_root, tmp_path):
    # G's learning rate 0: G never changes, so val/psnr never improves after epoch 1.
    changes = {"select_by": "val/psnr", "early_stop_patience": 1, "generator.epochs": 5, "generator.initial": 0.0}
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train", **changes)
    tracker = Tracker.connect(settings.tracking, tmp_path)
    result = train_stage(settings, tracker, tmp_path)
    assert result.last_epoch == 2 and result.model_version == "1"
    summary = json.loads((tmp_path / "outputs" / "train" / "summary.json").read_text())
    assert summary["stopped_early"].startswith("stopped early after epoch 2: val/psnr")
    assert load_checkpoint(result.checkpoint)["epoch"] == 2
    again = train_stage(with_changes(settings, {"train.continue_train": True}), tracker, tmp_path)
    assert [row["epoch"] for row in epoch_rows(tmp_path / "outputs" / "train")] == ["1", "2"]  # no epoch more
    assert again.run_id == result.run_id and again.model_version == "1"
