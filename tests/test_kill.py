"""kill -9 at chosen code points of a tracked training, then a continue: the result is the run that
never stopped (losses and final weights bit for bit), registered once, in one MLflow run."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.tracking.tracker import Tracker

from .helpers import epoch_rows, losses, tiny_settings

pytestmark = pytest.mark.slow  # a training process per kill point

KILL_RUN = {"generator.epochs": 3, "keep_checkpoints": 2}  # pruning drops epoch 1's snapshot

# Trains as the settings file says and SIGKILLs itself at one point (a callback, or a wrapped torch.save,
# os.replace or MlflowClient method for points inside a save or the registration: no hook in the product).
VICTIM = """
import json, os, signal, sys
from pathlib import Path
import torch
from mlflow import MlflowClient
from nectargan_core.settings import settings_from_dict, with_changes
from nectargan_core.stages import train_stage
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.callbacks import TrainingCallback

settings_file, project, point, epoch = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
settings = settings_from_dict(json.loads(Path(settings_file).read_text()))
snapshot = f"epoch_{epoch:04d}.pt"

def die(): os.kill(os.getpid(), signal.SIGKILL)

save, rename = torch.save, os.replace
def half_save(obj, f, *args, **kwargs):  # the snapshot's temp file is half written when the kill comes
    if point == "snapshot_write" and Path(f).name.startswith(f".{snapshot}."):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint"); die()
    return save(obj, f, *args, **kwargs)
def replace_then_die(src, dst, *args, **kwargs):  # renamed into place, not yet pruned
    rename(src, dst, *args, **kwargs)
    if point == "snapshot_renamed" and Path(dst).name == snapshot: die()
torch.save, os.replace = half_save, replace_then_die
if point == "registered":  # a version is registered; its alias, the comparison images and the summary not yet
    MlflowClient.set_registered_model_alias = lambda *args, **kwargs: die()

class Kill(TrainingCallback):
    def on_epoch_start(self, e, steps):
        if point == "epoch_start" and e == epoch: die()
    def on_epoch_end(self, summary):
        if point == "epoch_end" and summary.epoch == epoch: die()
    def on_examples(self, e, paths):
        if point == "examples" and e == epoch: die()
    def on_checkpoint(self, e, latest, snapshot):
        if point == "checkpoint" and e == epoch: die()
    def on_train_end(self, last, checkpoint):
        if point == "train_end": die()

if point == "continue":
    settings = with_changes(settings, {"train.continue_train": True})
result = train_stage(settings, Tracker.connect(settings.tracking, project), project, [Kill()])
print(json.dumps({"run_id": result.run_id, "model_version": result.model_version}))
"""


# A process that has imported what every victim imports (seconds of CPU each time) and forks one child
# per victim: each training still runs in a process of its own, killed for real, and exits as a script
# does (its atexit handlers run); the imports are paid once per module instead of 21 times.
ZYGOTE = """
import atexit, json, os, sys, threading, traceback
import mlflow.pyfunc, torch
import nectargan_core.stages, nectargan_core.tracking.registry, nectargan_core.training.trainer
assert threading.active_count() == 1, threading.enumerate()  # a fork copies no other thread
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv, code = job["argv"], 0
        try:
            exec(compile(job["code"], "<victim>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Zygote:
    """Runs a script in a fresh fork of the ZYGOTE process; returns what ``subprocess.run`` would."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "ready"

    def run(self, code: str, argv: list[str], folder: Path) -> subprocess.CompletedProcess:
        out, err = folder / f"{argv[2]}.out", folder / f"{argv[2]}.err"
        job = {"code": code, "argv": ["-c", *argv], "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        returncode = int(self.process.stdout.readline())
        return subprocess.CompletedProcess(argv, returncode, out.read_text(), err.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote():
    forks = Zygote()
    yield forks
    forks.close()


def _train(zygote: Zygote, settings, project: Path, point: str, epoch: int = 0) -> subprocess.CompletedProcess:
    """Every training of these tests runs in a fresh process, as a killed training and its continue do:
    what other tests did inside the pytest process never reaches the numbers compared."""
    settings_file = project / f"settings-{point}.json"
    settings_file.write_text(json.dumps(settings.model_dump(mode="json")))
    return zygote.run(VICTIM, [str(settings_file), str(project), point, str(epoch)], project)


@pytest.fixture(scope="module")
def reference(sample_root, tmp_path_factory, zygote):
    """The uninterrupted run."""
    project = tmp_path_factory.mktemp("uninterrupted")
    done = _train(zygote, tiny_settings(sample_root, project / "outputs" / "train", **KILL_RUN), project, "none")
    assert done.returncode == 0, done.stderr[-2000:]
    return project


@pytest.mark.parametrize(
    ("point", "epoch", "select"),
    [
        ("epoch_start", 1, None),  # before the first checkpoint: the continue trains from epoch 1
        ("epoch_end", 2, None),
        ("examples", 2, None),
        ("checkpoint", 2, None),
        ("train_end", 3, None),
        ("examples", 2, "val/l1"),  # with a best epoch to keep
        ("checkpoint", 1, "val/l1"),
        ("snapshot_write", 3, None),  # the final save: its snapshot half written
        ("snapshot_renamed", 3, None),  # the final save: snapshots not pruned
        ("registered", 3, None),  # registered, not yet aliased nor recorded in the summary
    ],
)
def test_a_kill_at_a_code_point_then_continue_equals_the_run_that_never_stopped(
    sample_root, reference, zygote, tmp_path, point, epoch, select
):
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train", select_by=select, **KILL_RUN)
    victim = _train(zygote, settings, tmp_path, point, epoch)
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]

    tracker = Tracker.connect(settings.tracking, tmp_path)
    (killed,) = tracker.client.search_runs([tracker.experiment_id])
    continued = _train(zygote, settings, tmp_path, "continue")
    assert continued.returncode == 0, continued.stderr[-2000:]
    result = json.loads(continued.stdout.splitlines()[-1])

    assert result == {"run_id": killed.info.run_id, "model_version": "1"}  # one run, registered once
    assert tracker.client.get_run(killed.info.run_id).info.status == "FINISHED"
    for key in ("loss/g", "lr/g"):  # one value per epoch: the replayed epoch is not logged twice
        assert [m.step for m in tracker.client.get_metric_history(killed.info.run_id, key)] == [1, 2, 3], key
    ours, theirs = tmp_path / "outputs" / "train", reference / "outputs" / "train"
    assert losses(epoch_rows(ours)) == losses(epoch_rows(theirs))
    a, b = load_checkpoint(ours / "checkpoints" / "latest.pt"), load_checkpoint(theirs / "checkpoints" / "latest.pt")
    assert a["epoch"] == b["epoch"] == 3
    for net in ("generator", "discriminator"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert (ours / "loss_log.csv").read_text() == (theirs / "loss_log.csv").read_text()
    assert not list(Path(ours).rglob(".*.tmp"))
    assert snapshots(ours) == snapshots(theirs) == ["epoch_0002.pt", "epoch_0003.pt"]
    assert registered(tracker, settings) == registered(Tracker.connect(settings.tracking, reference), settings)
    if select:  # the best epoch of the uninterrupted run's validation, and no leftover candidates
        best = min(epoch_rows(theirs), key=lambda row: float(row["val_l1"]))["epoch"]
        assert load_checkpoint(ours / "snapshots" / "best.pt")["epoch"] == int(best)
        assert not list((ours / "snapshots").glob("best_*.pt"))


def snapshots(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "snapshots").glob("epoch_*.pt"))


def registered(tracker: Tracker, settings) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(version, epoch) of every registered version, and where the aliases point."""
    name, client = settings.tracking.registered_model, tracker.client
    versions = sorted((v.version, v.tags["epoch"]) for v in client.search_model_versions(f"name='{name}'"))
    return versions, dict(client.get_registered_model(name).aliases)
