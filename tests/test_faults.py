"""Bad input and faults through the real `nectargan` entry point (in-process): each ends with exit code 2
and one line that names the file or key, never a traceback, and nothing written earlier is lost."""

import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nectargan_core.checkpoint import CheckpointError
from nectargan_core.cli import main
from nectargan_core.data.validate import passed_before
from nectargan_core.errors import describe_failure
from nectargan_core.files import held_lock
from nectargan_core.layout import RunPaths
from nectargan_core.settings import SettingsError, anchored, load_settings, with_changes
from nectargan_core.stages import DatasetInvalid, TrainingDiverged, train_stage, validate_stage
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.callbacks import TrainingCallback
from nectargan_core.training.records import append_epoch_row
from nectargan_core.training.resume import set_aside_previous_run
from nectargan_core.training.summary import RunSummary

from .helpers import tiny_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(finished_project, tmp_path_factory):
    """A copy of the finished project (these tests add files to it) and a params file with absolute paths."""
    base = tmp_path_factory.mktemp("faults") / "project"
    shutil.copytree(finished_project, base, symlinks=True)
    params = base / "params.yaml"
    params.write_text(json.dumps(anchored(load_settings(params), base).model_dump(mode="json")))
    return base, params


def _fail(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert any(line.startswith("error: ") for line in err.splitlines()), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_params_problems(tmp_path, capsys):
    _fail(capsys, ["settings", "--params", str(_file(tmp_path / "e.yaml", b""))], "e.yaml", "is empty")
    twice = _file(tmp_path / "t.yaml", b"seed: 1\nseed: 2\n")
    _fail(capsys, ["settings", "--params", str(twice)], "t.yaml", "key 'seed' appears twice")
    _fail(capsys, ["settings", "--params", str(tmp_path / "missing.yaml")], "missing.yaml", "does not exist")
    _fail(capsys, ["settings", "--params", str(ROOT / "params.yaml"), "-s", "train.loss.l3=1"], "train.loss.l3")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("zero.pt", b"", "not a readable checkpoint"),
        ("truncated.pt", b"PK\x03\x04 not really a zip", "not a readable checkpoint"),
    ],
)
def test_unreadable_checkpoints_name_the_file_and_the_others(project, tmp_path, capsys, name, content, needle):
    base, params = project
    bad = _file(base / "outputs" / "train" / "snapshots" / name, content)
    err = _fail(capsys, ["predict", "--params", str(params), "--model", str(bad), "--input", str(tmp_path)], needle)
    assert str(bad) in err and "epoch_0001.pt" in err  # the good snapshot beside it is offered
    bad.unlink()


def test_a_bare_state_dict_is_not_a_checkpoint(project, tmp_path, capsys):
    _base, params = project
    bare = tmp_path / "weights.pt"
    torch.save({"downs.0.weight": torch.zeros(1)}, bare)
    _fail(capsys, ["predict", "--params", str(params), "--model", str(bare), "--input", str(tmp_path)], str(bare))


def test_bad_images_among_the_inputs_and_a_corrupt_onnx(project, tmp_path, capsys):
    """--strict stops at a bad input, naming it (without it, bad inputs are listed and skipped)."""
    base, params = project
    model = base / "outputs" / "train" / "checkpoints" / "latest.pt"
    inputs = tmp_path / "in"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(_file(inputs / "good.png", b""))
    text = _file(inputs / "notes.png", b"this is text, not a PNG")
    args = ["predict", "--strict", "--params", str(params), "--model", str(model), "--input", str(inputs)]
    _fail(capsys, [*args, "--out", str(tmp_path / "out")], str(text), "not a readable image")
    text.unlink()
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(deep := inputs / "deep.tif")
    _fail(capsys, [*args, "--out", str(tmp_path / "out")], str(deep), "no 8-bit scale")
    deep.unlink()
    onnx = _file(tmp_path / "broken.onnx", b"\x00\x01garbage")
    _fail(capsys, ["predict", "--params", str(params), "--model", str(onnx), "--input", str(inputs)], str(onnx))


def test_output_dir_under_a_regular_file(project, capsys, monkeypatch):
    base, params = project
    monkeypatch.chdir(base)
    blocker = _file(base / "blocker", b"a file")
    before = (base / "outputs" / "train" / "checkpoints" / "latest.pt").read_bytes()
    _fail(
        capsys,
        ["train", "--params", str(params), "-s", f"train.output_dir={blocker / 'run'}", "-s", "tracking.uri=null"],
        str(blocker),
        "not a folder",
    )
    assert (base / "outputs" / "train" / "checkpoints" / "latest.pt").read_bytes() == before  # nothing lost


def test_tracking_store_problems(project, tmp_path, capsys):
    _base, params = project
    _fail(capsys, ["compare", "--params", str(params), "-s", "tracking.uri=nope://x"], "tracking")
    corrupt = _file(tmp_path / "mlflow.db", b"this is not a database" * 100)
    _fail(capsys, ["compare", "--params", str(params), "-s", f"tracking.uri=sqlite:///{corrupt}"], "tracking")


def test_a_full_disk_names_the_folder_and_the_free_space():
    error = OSError(28, "No space left on device", "/data/run/checkpoints/.latest.pt.x.tmp")
    line = describe_failure(error)
    assert line.startswith("/data/run/checkpoints/.latest.pt.x.tmp: No space left on device; the disk is full")
    assert "nothing written before was lost" in line


def test_a_really_full_disk_names_the_file(tmp_path):
    """/dev/full fails every write with ENOSPC, and the system names no file: the epoch table's path is put in."""
    table = tmp_path / "run" / "epochs.csv"
    table.parent.mkdir()
    table.symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        append_epoch_row(table, {"epoch": 1})
    assert describe_failure(info.value) == (
        f"{table}: No space left on device; the disk is full: free space there (nothing written before was "
        f"lost) and run again ({shutil.disk_usage(tmp_path / 'run').free / 2**20:,.0f} MiB free in {tmp_path / 'run'})"
    )


def test_a_full_disk_in_a_library_write_names_the_file(tmp_path):
    """A copy the way MLflow logs an artifact: the system names no file, the writer's frame does."""
    (source := tmp_path / "latest.pt").write_bytes(b"state")
    (store := tmp_path / "artifacts").mkdir()
    (store / "latest.pt").symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        shutil.copyfile(source, store / "latest.pt")
    assert info.value.filename is None
    assert describe_failure(info.value).startswith(f"{store / 'latest.pt'}: No space left on device; the disk is full")


def test_a_folder_where_a_report_goes_is_named_not_its_temp_file(project, tmp_path, capsys):
    _base, params = project
    (tmp_path / "v" / "validation.csv").mkdir(parents=True)
    err = _fail(capsys, ["validate", "--params", str(params), "-s", f"outputs.validation={tmp_path / 'v'}"])
    assert err.strip() == (
        f"error: {tmp_path / 'v' / 'validation.csv'}: Is a directory; it is a folder where a file was expected: "
        "remove it or choose another path"
    )
    assert [p.name for p in (tmp_path / "v").iterdir()] == ["validation.csv"]  # no temp file left


def test_an_unexpected_error_points_at_debug(capsys):
    assert "run again with --debug" in describe_failure(ZeroDivisionError("boom"))
    with pytest.raises(SystemExit):  # argparse's own usage errors stay argparse's
        main(["no-such-command"])
    capsys.readouterr()
    with pytest.raises(SettingsError):  # --debug lets the real exception (and its traceback) through
        main(["--debug", "settings", "--params", "/nonexistent/params.yaml"])


class InterruptAt(TrainingCallback):
    """Ctrl+C at a chosen point: after an epoch's checkpoint, or after training, before registration."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    def on_checkpoint(self, epoch, latest, snapshot):
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def on_train_end(self, last_epoch, checkpoint):
        if self.epoch is None:
            raise KeyboardInterrupt


def _tracked(sample_root, tmp_path, **train):
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train", **train)
    return settings, Tracker.connect(settings.tracking, tmp_path)


def test_an_interrupted_run_is_killed_then_reopened_by_the_continue(sample_root, tmp_path):
    settings, tracker = _tracked(sample_root, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_stage(settings, tracker, tmp_path, [InterruptAt(1)])
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.status == "KILLED"  # never left RUNNING
    result = train_stage(with_changes(settings, {"train.continue_train": True}), tracker, tmp_path)
    assert result.run_id == run.info.run_id  # one training, one run
    reopened = tracker.client.get_run(result.run_id)
    assert reopened.info.status == "FINISHED" and reopened.data.tags["continued"] == "true"
    assert [m.step for m in tracker.client.get_metric_history(result.run_id, "loss/g")] == [1, 2]
    assert result.model_version == "1"


def test_a_run_killed_before_registration_is_finished_by_the_continue(sample_root, tmp_path):
    settings, tracker = _tracked(sample_root, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_stage(settings, tracker, tmp_path, [InterruptAt(None)])  # after the final checkpoint
    assert not tracker.client.search_registered_models()
    again = with_changes(settings, {"train.continue_train": True})
    result = train_stage(again, tracker, tmp_path)
    assert result.last_epoch == 2 and result.model_version == "1"
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1
    finished = train_stage(again, tracker, tmp_path)  # finished: not registered twice, no empty run
    assert (finished.run_id, finished.model_version, finished.last_epoch) == (result.run_id, "1", 2)
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1


def test_a_dead_run_with_other_settings_is_marked_killed(sample_root, tmp_path):
    settings, tracker = _tracked(sample_root, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_stage(settings, tracker, tmp_path, [InterruptAt(1)])
    (dead,) = tracker.client.search_runs([tracker.experiment_id])
    tracker.client.update_run(dead.info.run_id, "RUNNING")  # as kill -9 leaves it
    changed = with_changes(settings, {"train.continue_train": True, "train.loss.l1": 50.0})
    result = train_stage(changed, tracker, tmp_path)
    assert result.run_id != dead.info.run_id
    assert tracker.client.get_run(dead.info.run_id).info.status == "KILLED"


def test_one_writer_per_output_folder(project, capsys, monkeypatch):
    base, params = project
    monkeypatch.chdir(base)  # the embedded MLflow store is the project's
    with held_lock(base / "outputs" / "train" / ".nectargan.lock", "test"):
        err = _fail(capsys, ["train", "--params", str(params)], "is in use by pid", ".nectargan.lock")
    assert f"pid {os.getpid()}" in err


def test_training_checks_the_data_itself_when_no_fresh_report_says_it_passed(sample_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    settings = with_changes(tiny_settings(data, tmp_path / "outputs" / "train"), {"outputs.validation": tmp_path / "v"})
    tracker = Tracker.connect(settings.tracking, tmp_path)
    validate_stage(settings)
    assert passed_before(settings.data, tmp_path / "v")
    train_stage(settings, tracker, tmp_path)  # the fresh report is enough
    before = (tmp_path / "outputs" / "train" / "checkpoints" / "latest.pt").read_bytes()
    broken = data / "train" / "train_0003.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated: the report is stale now
    assert not passed_before(settings.data, tmp_path / "v")
    with pytest.raises(DatasetInvalid, match=r"train_0003\.png") as info:
        train_stage(settings, tracker, tmp_path)  # without the validate stage
    assert "decodes" in str(info.value)
    assert (tmp_path / "outputs" / "train" / "checkpoints" / "latest.pt").read_bytes() == before  # not set aside
    assert not (tmp_path / "outputs" / "train" / "previous").exists()


def test_a_diverged_run_is_kept_but_not_registered(sample_root, tmp_path, capsys):
    settings, tracker = _tracked(sample_root, tmp_path)
    assert train_stage(settings, tracker, tmp_path).model_version == "1"
    wild = with_changes(settings, {"train.diverged_above": 1.0, "train.loss.l1": 200.0})  # G's loss: far above 1
    with pytest.raises(TrainingDiverged, match=r"training diverged: the mean losses of epoch 2 \(G ") as info:
        train_stage(wild, tracker, tmp_path)
    assert str(info.value).endswith("train again. Settings changed from the defaults: train.loss.l1=200 (default 100).")
    assert [str(v.version) for v in tracker.client.search_model_versions("name='nectargan-generator'")] == ["1"]
    assert str(tracker.client.get_model_version_by_alias("nectargan-generator", "current").version) == "1"
    newest = tracker.client.search_runs([tracker.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert newest.data.tags["not_registered"].startswith("training diverged")
    assert (tmp_path / "outputs" / "train" / "checkpoints" / "latest.pt").exists()  # kept


CONNECT = """
from pathlib import Path
from nectargan_core.settings import TrackingSettings
from nectargan_core.tracking.tracker import Tracker
Tracker.connect(TrackingSettings(), Path(".")).client.search_registered_models()
"""


@pytest.mark.slow
def test_two_processes_create_a_fresh_store_at_once(tmp_path):
    """Both the tracking and the registry store migrate a new mlflow.db; before the lock covered both,
    one of two processes failed with alembic's 'Online migration expected to match one row'."""
    import subprocess
    import sys

    for attempt in range(2):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        both = [
            subprocess.Popen([sys.executable, "-c", CONNECT], cwd=folder, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        for process in both:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]


def _train_fails(capsys, *overrides: str) -> str:
    assert main(["train", *(arg for o in overrides for arg in ("-s", o))]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def test_failed_fresh_runs_in_a_row_keep_the_complete_run(finished_project, tmp_path, monkeypatch, capsys):
    """Two fresh runs that stop on a NaN loss before their first checkpoint: the registered run before
    them stays in previous/, which both errors name, with the changed setting to undo."""
    shutil.copytree(finished_project, tmp_path / "p", symlinks=True)
    monkeypatch.chdir(tmp_path / "p")
    run, kept = Path("outputs/train"), Path("outputs/train/previous")
    good = {name: (run / name).read_bytes() for name in ("checkpoints/latest.pt", "epochs.csv", "summary.json")}
    for _ in range(2):
        line = _train_fails(capsys, "train.generator.initial=1e12")
        assert "no checkpoint had been written yet; the earlier complete run is kept in outputs/train/previous" in line
        assert line.endswith("Settings changed from the defaults: train.generator.initial=1e+12 (default 0.0002).")
        assert {name: (kept / name).read_bytes() for name in good} == good
        assert not (run / "checkpoints").exists() and sorted(p.name for p in run.iterdir()) == [
            ".nectargan.lock",
            "loss_log.csv",
            "previous",
        ]
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["checkpoints", "snapshots", "examples", "loss_log.csv", "epochs.csv", "summary.json"]
    )


def test_continue_with_nothing_to_continue_is_refused(finished_project, tmp_path, monkeypatch, capsys):
    shutil.copytree(finished_project, tmp_path / "p", symlinks=True)
    monkeypatch.chdir(tmp_path / "p")
    for _ in range(2):  # the refusal leaves no lock file that would pass for a run killed early
        line = _train_fails(capsys, "train.continue_train=true", "train.output_dir=outputs/empty")
        assert line == (
            "error: outputs/empty holds no checkpoint to continue (it does not exist): train without "
            "train.continue_train, or point train.output_dir at the run to continue"
        )
        assert not Path("outputs/empty").exists()
    Path("outputs/empty").mkdir()
    assert "(it is empty)" in _train_fails(capsys, "train.continue_train=true", "train.output_dir=outputs/empty")
    Path("outputs/empty/notes.txt").write_text("x")
    assert "(it holds notes.txt, but no checkpoints/latest.pt)" in _train_fails(
        capsys, "train.continue_train=true", "train.output_dir=outputs/empty"
    )
    with sqlite3.connect("mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone() == (1,)  # no tracking run was opened


def _run_folder(root: Path, summary: dict | None, state: bool = True) -> RunPaths:
    """Records of a run as a trainer leaves them: a full state (or none), an epoch table, a summary."""
    paths = RunPaths(root)
    paths.checkpoints.mkdir(parents=True)
    if state:
        torch.save({"epoch": 1}, paths.latest)
    paths.epochs.write_text("epoch\n1\n")
    if summary is not None:
        RunSummary("x", 1, 1, None, "cpu", "float32", **summary).write(paths.summary)
    return paths


@pytest.mark.parametrize(
    ("summary", "held", "advice"),
    [
        (None, "stopped before its end", "continue it with train.continue_train: true, or "),  # killed
        ({"not_registered": "training diverged"}, "diverged", ""),
    ],
)
def test_an_incomplete_run_with_a_full_state_never_replaces_a_complete_one(tmp_path, summary, held, advice):
    earlier = _run_folder(tmp_path / "run" / "previous", {})
    paths = _run_folder(tmp_path / "run", summary)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as info:
        set_aside_previous_run(paths)
    assert str(info.value) == (
        f"{paths.root} holds a run that never completed (it {held}) and {earlier.root} the earlier complete run, "
        f"which this fresh run must not replace: {advice}delete {paths.checkpoints} to start afresh. Nothing was moved."
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_leftovers_without_a_full_state_never_replace_a_run_with_one(tmp_path, caplog):
    earlier = _run_folder(tmp_path / "run" / "previous", None)  # killed after a checkpoint: it can continue
    paths = _run_folder(tmp_path / "run", None, state=False)  # stopped before its first checkpoint
    with caplog.at_level(logging.WARNING):
        assert set_aside_previous_run(paths) is None  # no complete run to name
    assert earlier.latest.is_file() and earlier.epochs.read_text() == "epoch\n1\n"
    assert sorted(p.name for p in paths.root.iterdir()) == ["previous"]
    assert f"dropped checkpoints, epochs.csv of a run in {paths.root} that stopped before" in caplog.text
