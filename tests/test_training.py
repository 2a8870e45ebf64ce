import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nectargan_core.checkpoint import CheckpointError, load_checkpoint
from nectargan_core.cli import main
from nectargan_core.settings import with_changes
from nectargan_core.training.callbacks import TrainingCallback
from nectargan_core.training.records import LossLog
from nectargan_core.training.step import Losses
from nectargan_core.training.trainer import NonFiniteLossError, train

from .helpers import StopAfter, epoch_rows, losses, tiny_settings


def test_training_writes_every_output(sample_root, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_settings(sample_root, out, **{"generator.epochs": 3}))
    assert (result.start_epoch, result.last_epoch) == (1, 3)
    assert result.checkpoint == out / "checkpoints" / "latest.pt"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["latest.pt"]  # the DVC output: one file
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    rows = epoch_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["l1_weight"]) == 100.0 and r["l2"] == "" for r in rows)
    # Loss log: every iteration of every epoch, D + G + gan + l1, flushed at the end although
    # dump_frequency (5) was never reached.
    with (out / "loss_log.csv").open() as handle:
        log_rows = list(csv.DictReader(handle))
    assert len(log_rows) == 3 * 3 * 4
    assert {r["loss"] for r in log_rows} == {"D", "G", "gan", "l1"}
    l1 = next(r for r in log_rows if r["loss"] == "l1")
    assert float(l1["weighted"]) == pytest.approx(100 * float(l1["value"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_epoch"] == 3 and summary["precision"] == "float32"
    assert summary["final_epoch"]["losses"]["l1"] == pytest.approx(float(rows[-1]["l1"]))
    assert not list(out.rglob("*.tmp"))


def test_same_seed_same_losses(sample_root, tmp_path):
    train(tiny_settings(sample_root, tmp_path / "a"))
    train(tiny_settings(sample_root, tmp_path / "b"))
    assert losses(epoch_rows(tmp_path / "a")) == losses(epoch_rows(tmp_path / "b"))
    other = with_changes(tiny_settings(sample_root, tmp_path / "c"), {"seed": 8})
    train(other)
    assert losses(epoch_rows(tmp_path / "a")) != losses(epoch_rows(tmp_path / "c"))


def test_continue_equals_uninterrupted(sample_root, tmp_path):
    train(tiny_settings(sample_root, tmp_path / "full", **{"generator.epochs": 4}))
    train(tiny_settings(sample_root, tmp_path / "split", **{"generator.epochs": 2}))
    resumed = tiny_settings(sample_root, tmp_path / "split", **{"generator.epochs": 4, "continue_train": True})
    result = train(resumed)
    assert result.start_epoch == 3
    assert result.changed_settings == ["train.generator.epochs: 2 -> 4"]
    assert losses(epoch_rows(tmp_path / "split")) == losses(epoch_rows(tmp_path / "full"))
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])


def test_interrupted_run_continues_exactly_with_the_lr_decay(sample_root, tmp_path):
    decay = {"generator.epochs": 2, "generator.epochs_decay": 2}
    train(tiny_settings(sample_root, tmp_path / "full", **decay))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_settings(sample_root, tmp_path / "cut", **decay), [StopAfter(2)])
    with (tmp_path / "cut" / "loss_log.csv").open() as handle:
        assert {row["epoch"] for row in csv.DictReader(handle)} == {"1", "2"}  # cache written on Ctrl+C
    result = train(tiny_settings(sample_root, tmp_path / "cut", continue_train=True, load_epoch=2, **decay))
    assert result.start_epoch == 3 and result.changed_settings == []
    full, cut = epoch_rows(tmp_path / "full"), epoch_rows(tmp_path / "cut")
    assert losses(cut) == losses(full)
    assert [r["lr_g"] for r in cut] == [r["lr_g"] for r in full]
    with (tmp_path / "cut" / "loss_log.csv").open() as a, (tmp_path / "full" / "loss_log.csv").open() as b:
        assert a.read() == b.read()


def test_persisted_checkpoints_are_never_used_silently(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 3}))
    result = train(tiny_settings(sample_root, out))
    assert result.start_epoch == 1
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["epoch"] == 2
    assert [int(r["epoch"]) for r in epoch_rows(out)] == [1, 2]
    # The earlier run was set aside, not destroyed.
    previous = out / "previous"
    assert sorted(p.name for p in (previous / "snapshots").iterdir())[-1] == "epoch_0003.pt"
    assert load_checkpoint(previous / "checkpoints" / "latest.pt")["epoch"] == 3
    assert [int(r["epoch"]) for r in epoch_rows(previous)] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="which this run would replace"):
        train(
            tiny_settings(
                sample_root,
                out,
                continue_train=True,
                continue_from=str(previous / "checkpoints"),
                **{"generator.epochs": 4},
            )
        )


def test_changed_architecture_is_refused(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out))
    wider = tiny_settings(sample_root, out, continue_train=True)
    wider = with_changes(wider, {"model.generator.features": 16, "data.input_channels": 1})
    with pytest.raises(CheckpointError) as info:
        train(wider)
    message = str(info.value)
    assert "another architecture" in message
    assert "model.generator.features: checkpoint 8, settings 16" in message
    assert "data.input_channels: checkpoint 3, settings 1" in message
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["epoch"] == 2  # nothing lost


def test_missing_epoch_and_missing_checkpoints_are_named(sample_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="holds no checkpoint to continue"):
        train(tiny_settings(sample_root, out, continue_train=True))
    train(tiny_settings(sample_root, out))
    with pytest.raises(CheckpointError, match="no checkpoint for epoch 7; available epochs: 1, 2"):
        train(tiny_settings(sample_root, out, continue_train=True, load_epoch=7))
    with pytest.raises(CheckpointError, match="registered models are resolved by the pipeline"):
        train(tiny_settings(sample_root, out, continue_train=True, continue_from="models:/facades@latest"))


def test_continue_from_an_explicit_checkpoint_path(sample_root, tmp_path):
    train(tiny_settings(sample_root, tmp_path / "parent", snapshot="full"))
    source = tmp_path / "parent" / "snapshots" / "epoch_0001.pt"
    child = tiny_settings(
        sample_root, tmp_path / "child", continue_train=True, continue_from=str(source), **{"loss.l1": 50.0}
    )
    result = train(child)
    assert result.start_epoch == 2 and result.last_epoch == 2
    assert "train.loss.l1: 100.0 -> 50.0" in result.changed_settings
    assert float(epoch_rows(tmp_path / "child")[0]["l1_weight"]) == 50.0


def test_checkpoint_holds_the_full_state_and_retention_bounds_disk(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, keep_checkpoints=2, **{"generator.epochs": 4}))
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]
    snapshot = torch.load(out / "snapshots" / "epoch_0004.pt", weights_only=True)
    assert snapshot["contents"] == "generator" and set(snapshot) >= {"generator", "settings", "architecture"}
    assert not {"discriminator", "opt_g", "opt_d"} & set(snapshot)
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["format_version"] == 2 and state["contents"] == "full"
    assert state["epoch"] == 4 and state["seed"] == 7
    assert set(state) >= {"generator", "discriminator", "opt_g", "opt_d", "settings", "architecture"}
    assert state["opt_g"]["state"][0]["step"].item() == 4 * 3
    assert state["settings"]["train"]["loss"]["l1"] == 100.0


def test_example_strips_show_fixed_samples(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out))
    strips = sorted((out / "examples").glob("*.png"))
    assert [p.name for p in strips] == [
        "epoch_0001_sample_00.png",
        "epoch_0001_sample_01.png",
        "epoch_0002_sample_00.png",
        "epoch_0002_sample_01.png",
    ]
    first, second = (np.asarray(Image.open(out / "examples" / f"epoch_000{e}_sample_00.png")) for e in (1, 2))
    assert first.shape == (32, 96, 3)
    assert np.array_equal(first[:, :32], second[:, :32]) and np.array_equal(first[:, 64:], second[:, 64:])
    assert not np.array_equal(first[:, 32:64], second[:, 32:64])  # the generator changed


def test_weight_schedules_switch_losses_on_by_epoch(sample_root, tmp_path):
    out = tmp_path / "run"
    schedules = {"sobel": {"initial": 0.0, "target": 4.0, "start_epoch": 1, "end_epoch": 2}}
    train(tiny_settings(sample_root, out, loss={"schedules": schedules}))
    first, second = epoch_rows(out)
    assert first["sobel"] == "" and first["sobel_weight"] == "0.0"
    assert float(second["sobel"]) > 0 and second["sobel_weight"] == "4.0"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 1}))
    blowup = tiny_settings(sample_root, out, continue_train=True, **{"generator.epochs": 2})
    blowup = with_changes(blowup, {"train.loss.l1": 1e39})  # overflows float32: the G loss is infinite
    with pytest.raises(NonFiniteLossError) as info:
        train(blowup)
    message = str(info.value)
    assert "loss 'G' became inf in epoch 2" in message
    assert f"the last good checkpoint is {out / 'checkpoints' / 'latest.pt'}. Lower" in message
    assert message.endswith("Settings changed from the defaults: train.loss.l1=1e+39 (default 100).")
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["epoch"] == 1
    assert [p.name for p in (out / "snapshots").iterdir()] == ["epoch_0001.pt"]
    with (out / "loss_log.csv").open() as handle:
        assert "2" in {row["epoch"] for row in csv.DictReader(handle)}  # the bad epoch's rows are kept


@pytest.mark.parametrize("extra", [{"precision": "bf16"}, {"channels_last": True}])
def test_bf16_autocast_and_channels_last_run_on_cpu(sample_root, tmp_path, extra):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 1}, **extra))
    row = epoch_rows(out)[0]
    assert np.isfinite(float(row["loss_g"])) and float(row["loss_g"]) > 0


def test_loss_log_appends_without_rewriting(tmp_path):
    path = tmp_path / "loss_log.csv"
    log = LossLog(path)
    weights = {"gan": 1.0, "l1": 10.0}
    log.add_epoch(1, [Losses(0.5, 3.0, {"l1": 0.25})], weights)
    log.flush()
    with path.open() as handle:
        first = list(csv.DictReader(handle))
    assert [(r["loss"], r["value"], r["weight"], r["weighted"]) for r in first] == [
        ("D", "0.5", "1.0", "0.5"),
        ("G", "3.0", "1.0", "3.0"),
        ("l1", "0.25", "10.0", "2.5"),
    ]
    # Mark the written rows: a flush that rewrote the file from memory would lose the mark.
    marked = path.read_bytes().replace(b"0.5,", b"0.7,")
    path.write_bytes(marked)
    log.add_epoch(2, [Losses(0.4, 2.0, {"l1": 0.2}), Losses(0.3, 1.0, {"l1": 0.1})], weights)
    assert log.pending == 6
    log.flush()
    after = path.read_bytes()
    assert after.startswith(marked) and after.count(b"\n") == 1 + 3 + 6
    assert log.pending == 0


class LogLinesAtEpochEnd(TrainingCallback):
    def __init__(self, path):
        self.path = path
        self.epochs_on_disk = {}

    def on_epoch_end(self, summary):
        epochs = set()
        if self.path.exists():
            with self.path.open() as handle:
                epochs = {int(row["epoch"]) for row in csv.DictReader(handle)}
        self.epochs_on_disk[summary.epoch] = epochs


def test_loss_log_is_appended_every_dump_frequency_epochs(sample_root, tmp_path):
    out = tmp_path / "run"
    settings = tiny_settings(sample_root, out, checkpoint_every=10, **{"generator.epochs": 3})
    settings = with_changes(settings, {"logging.dump_frequency": 2})
    watcher = LogLinesAtEpochEnd(out / "loss_log.csv")
    train(settings, [watcher])
    assert watcher.epochs_on_disk == {1: set(), 2: {1, 2}, 3: {1, 2}}
    with (out / "loss_log.csv").open() as handle:
        assert {int(row["epoch"]) for row in csv.DictReader(handle)} == {1, 2, 3}


def test_continuing_at_the_total_finishes_and_past_it_is_an_error(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out))
    before = (out / "checkpoints" / "latest.pt").read_bytes()
    finished = train(tiny_settings(sample_root, out, continue_train=True))  # e.g. killed before registering
    assert (finished.start_epoch, finished.last_epoch, finished.history) == (3, 2, [])
    assert finished.checkpoint == out / "checkpoints" / "latest.pt" and finished.checkpoint.read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["last_epoch"] == 2
    with pytest.raises(CheckpointError, match="at epoch 2, past the configured total of 1"):
        train(tiny_settings(sample_root, out, continue_train=True, **{"generator.epochs": 1}))


def test_data_loader_workers_keep_continue_exact(sample_root, tmp_path):
    def workers(out, **kw):
        return with_changes(tiny_settings(sample_root, out, **kw), {"data.num_workers": 2})

    train(workers(tmp_path / "full", **{"generator.epochs": 3}))
    with pytest.raises(KeyboardInterrupt):
        train(workers(tmp_path / "split", **{"generator.epochs": 3}), [StopAfter(1)])
    train(workers(tmp_path / "split", continue_train=True, **{"generator.epochs": 3}))
    assert losses(epoch_rows(tmp_path / "split")) == losses(epoch_rows(tmp_path / "full"))


def test_separate_schedules_drive_the_discriminator(sample_root, tmp_path):
    out = tmp_path / "run"
    settings = tiny_settings(sample_root, out, separate_schedules=True, **{"discriminator.initial": 1e-3})
    train(settings)
    assert {(r["lr_g"], r["lr_d"]) for r in epoch_rows(out)} == {("0.0002", "0.001")}
    shared = tiny_settings(sample_root, tmp_path / "shared", **{"discriminator.initial": 1e-3})
    train(shared)
    assert {r["lr_d"] for r in epoch_rows(tmp_path / "shared")} == {"0.0002"}


def test_nan_weights_are_never_checkpointed(sample_root, tmp_path):
    from nectargan_core.training.step import GANStep
    from nectargan_core.training.trainer import _check_finite_weights

    step = GANStep(tiny_settings(sample_root, tmp_path), torch.device("cpu"), None)
    _check_finite_weights(step, 1, "no checkpoint had been written yet")  # fresh weights pass
    with torch.no_grad():
        next(step.discriminator.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"weights became NaN or infinite in epoch 3; .* and the last"):
        _check_finite_weights(step, 3, f"the last good checkpoint is {tmp_path / 'epoch_0002.pt'}")


def test_checkpoints_are_readable_by_others(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 1}))
    mode = (out / "checkpoints" / "latest.pt").stat().st_mode
    assert mode & 0o044 == 0o044  # group/other can read (umask 022)


def test_cli_train_command(sample_root, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    settings = tiny_settings(sample_root, tmp_path / "run", **{"generator.epochs": 1})
    settings = with_changes(settings, {"tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    params.write_text(json.dumps(settings.model_dump(mode="json")))
    assert main(["train", "--params", str(params)]) == 0
    captured = capsys.readouterr()
    assert "trained to epoch 1" in captured.out and "version 1 (alias current)" in captured.out
    assert (tmp_path / "mlruns").is_dir()
    assert "epoch 1/1" in captured.err
    assert main(["train", "--params", str(params), "-s", "train.continue_train=true", "-s", "train.load_epoch=4"]) == 2
    assert "no checkpoint for epoch 4" in capsys.readouterr().err


def test_continuing_from_an_earlier_epoch_replaces_the_later_records(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, snapshot="full", **{"generator.epochs": 3}))
    changes = {"generator.epochs": 3, "loss.l1": 10.0, "snapshot": "full"}
    again = tiny_settings(sample_root, out, continue_train=True, load_epoch=1, **changes)
    result = train(again)
    assert result.start_epoch == 2
    rows = epoch_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["l1_weight"] for r in rows] == ["100.0", "10.0", "10.0"]
    with (out / "loss_log.csv").open() as handle:
        log_rows = list(csv.DictReader(handle))
    assert len(log_rows) == 3 * 3 * 4  # epochs 2 and 3 once each, from the continued run
    assert {r["weight"] for r in log_rows if r["loss"] == "l1" and r["epoch"] != "1"} == {"10.0"}


def test_continuing_from_a_weights_snapshot_says_what_to_use(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 3}))
    with pytest.raises(CheckpointError) as info:
        train(tiny_settings(sample_root, out, continue_train=True, load_epoch=1, **{"generator.epochs": 3}))
    message = str(info.value)
    assert f"{out / 'snapshots' / 'epoch_0001.pt'} is a snapshot holding generator weights of epoch 1" in message
    assert "checkpoints/latest.pt" in message and "train.warm_start" in message
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["epoch"] == 3  # nothing was touched


def test_a_weights_snapshot_warm_starts_a_fresh_run(sample_root, tmp_path):
    train(tiny_settings(sample_root, tmp_path / "parent"))
    source = tmp_path / "parent" / "snapshots" / "epoch_0002.pt"
    result = train(tiny_settings(sample_root, tmp_path / "child", warm_start=str(source), **{"generator.epochs": 1}))
    assert result.start_epoch == 1
    child = load_checkpoint(tmp_path / "child" / "checkpoints" / "latest.pt")
    assert child["opt_g"]["state"][0]["step"].item() == 3  # fresh optimisers: one epoch of 3 steps
    fresh = train(tiny_settings(sample_root, tmp_path / "fresh", **{"generator.epochs": 1}))
    assert fresh.history[0].loss_g != result.history[0].loss_g  # it did start from the parent's weights


def test_snapshot_precision_and_full_snapshots_share_the_bytes(sample_root, tmp_path):
    train(tiny_settings(sample_root, tmp_path / "half", snapshot_precision="bf16", **{"generator.epochs": 1}))
    half = load_checkpoint(tmp_path / "half" / "snapshots" / "epoch_0001.pt")
    assert {v.dtype for v in half["generator"].values() if v.is_floating_point()} == {torch.bfloat16}
    train(
        tiny_settings(
            sample_root, tmp_path / "full", snapshot="full", snapshot_precision="fp16", **{"generator.epochs": 1}
        )
    )
    latest, snapshot = (
        tmp_path / "full" / "checkpoints" / "latest.pt",
        tmp_path / "full" / "snapshots" / "epoch_0001.pt",
    )
    assert latest.stat().st_ino == snapshot.stat().st_ino  # a second name for the full state (fp32), not a copy


def test_appending_never_writes_through_a_hard_link(tmp_path):
    """With DVC's hardlink cache the loss log may share its bytes with the cache: appends make a copy first."""
    path, cached = tmp_path / "loss_log.csv", tmp_path / "cache_entry"
    log = LossLog(path)
    log.add_epoch(1, [Losses(0.5, 3.0, {})], {})
    log.flush()
    os.link(path, cached)
    cached.chmod(0o444)  # DVC protects what it links from the cache
    before = cached.read_bytes()
    log.add_epoch(2, [Losses(0.4, 2.0, {})], {})
    log.flush()
    assert cached.read_bytes() == before and path.read_bytes().startswith(before)
    assert path.stat().st_ino != cached.stat().st_ino and path.read_bytes().count(b"\n") == 1 + 2 + 2


def test_setting_aside_never_replaces_an_unregistered_run(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 1}))  # A
    train(tiny_settings(sample_root, out, **{"generator.epochs": 2}))  # B: A goes to previous/
    with pytest.raises(CheckpointError, match="never registered") as info:
        train(tiny_settings(sample_root, out, **{"generator.epochs": 3}))  # C would replace A
    assert str(out / "previous") in str(info.value)
    assert load_checkpoint(out / "previous" / "checkpoints" / "latest.pt")["epoch"] == 1  # A is intact
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["epoch"] == 2  # and so is B
    summary = json.loads((out / "previous" / "summary.json").read_text())
    (out / "previous" / "summary.json").write_text(json.dumps({**summary, "model_version": "1", "registered_epoch": 1}))
    train(tiny_settings(sample_root, out, **{"generator.epochs": 3}))  # a registered A may be replaced
    assert load_checkpoint(out / "previous" / "checkpoints" / "latest.pt")["epoch"] == 2


def test_temp_files_of_a_killed_run_are_removed_at_the_next_start(sample_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_settings(sample_root, out, **{"generator.epochs": 1}))
    left = [out / "checkpoints" / ".latest.pt.k3x.tmp", out / "examples" / ".epoch_0002_sample_00.png.q1.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    train(tiny_settings(sample_root, out, continue_train=True))
    assert not any(p.exists() for p in left) and not list(out.rglob(".*.tmp"))
