"""Data-parallel training on CPU with the gloo backend, through torchrun and `nectargan train`.

2 processes x 2 samples train what 1 process x 4 does (same global batches, gradients averaged),
so their per-epoch losses agree within float rounding; rank 0 alone writes files and tracks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch.utils.data import DataLoader

from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.cli import main
from nectargan_core.distributed import RankBatches, World
from nectargan_core.settings import SettingsError, with_changes
from nectargan_core.stages import train_stage
from nectargan_core.tracking.tracker import Tracker

from .helpers import epoch_rows, losses, tiny_settings

BIN = Path(sys.executable).parent
# Per-epoch mean losses of 2 x 2 against 1 x 4: float sums in another order, nothing more.
RTOL = 1e-5

# No randomness that differs by process: no dropout, no random crop or flip.
EXACT = {
    "data.batch_size": 4,
    "data.load_size": 32,
    "data.crop_size": 32,
    "data.augment.joint.hflip.p": 0.0,
    "model.generator.dropout": 0.0,
    "generator.epochs": 2,
}


def _settings(sample_root: Path, output_dir: Path | None = None, **more):
    train = {k: v for k, v in {**EXACT, **more}.items() if not k.startswith(("data.", "model."))}
    other = {k: v for k, v in EXACT.items() if k.startswith(("data.", "model."))}
    return with_changes(tiny_settings(sample_root, output_dir, **train), other)


@pytest.mark.parametrize(("size", "world", "batch"), [(6, 2, 4), (10, 2, 4), (9, 3, 3), (7, 2, 2)])
def test_the_ranks_share_out_the_batches_one_process_would_train(size, world, batch):
    generator = torch.Generator()
    single = [
        b.tolist() for b in DataLoader(range(size), batch_size=batch, shuffle=True, generator=generator.manual_seed(3))
    ]
    shares = [
        list(DataLoader(range(size), batch_sampler=RankBatches(size, batch, World(r, r, world), g), generator=g))
        for r, g in ((r, torch.Generator().manual_seed(3)) for r in range(world))
    ]
    steps = [sorted(x for share in shares for x in share[i].tolist()) for i in range(len(shares[0]))]
    kept = [sorted(b) for b in single if len(b) >= world]  # a last batch smaller than the world is dropped
    assert steps == kept
    assert all(len(share) == len(RankBatches(size, batch, World(0, 0, world), generator)) for share in shares)


def test_a_batch_that_does_not_divide_over_the_processes_is_refused():
    with pytest.raises(SettingsError, match=r"data\.batch_size \(4\) is the global batch .* \(3\) processes"):
        with_changes(tiny_settings(Path("data")), {"data.batch_size": 4, "train.nproc_per_node": 3})


def test_a_process_group_that_cannot_form_says_why(sample_root, tmp_path, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(_settings(sample_root, tmp_path / "out").model_dump(mode="json")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["train", "--params", str(params), "-s", "train.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "rank 0 of 2 could not join the process group" in err and "--rdzv-endpoint" in err
    monkeypatch.setenv("RANK", "5")
    assert main(["train", "--params", str(params)]) == 2
    assert "RANK 5 is outside WORLD_SIZE 2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "epochs.csv").exists()


def _project(sample_root: Path, tmp_path: Path, **more) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = _settings(sample_root, **more)
    (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    return tmp_path


def _run(args: list[str], project: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(extra_env or {})}
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=300)


def _client(project: Path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    return client, client.get_experiment_by_name("nectargan").experiment_id


@pytest.mark.slow
def test_torchrun_two_processes_train_what_one_process_trains(sample_root, tmp_path):
    single = tmp_path / "single"
    settings = _settings(sample_root, single / "outputs" / "train")
    train_stage(settings, Tracker.connect(settings.tracking, single), single)

    project = _project(sample_root, tmp_path / "ddp")
    done = _run(["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python", "nectargan", "train"], project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained to epoch 2") == 1  # rank 0 reports, the other rank is silent

    ours, theirs = losses(epoch_rows(project / "outputs" / "train")), losses(epoch_rows(single / "outputs" / "train"))
    assert len(ours) == len(theirs) == 2  # one row per epoch, not one per process
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        for key in mine:
            if reference[key]:  # a loss that did not run stays empty in both
                assert float(mine[key]) == pytest.approx(float(reference[key]), rel=RTOL), key
            else:
                assert mine[key] == "", key

    client, experiment = _client(project)
    (run,) = client.search_runs([experiment])  # one MLflow run, not one per process
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/g")] == [1, 2]
    files = sorted(
        str(p.relative_to(project / "outputs" / "train")) for p in (project / "outputs" / "train").rglob("*")
    )
    assert "checkpoints/latest.pt" in files and "snapshots/epoch_0002.pt" in files
    assert not [name for name in files if "rank" in name or name.endswith(".tmp")]  # no per-rank copies


# Kills rank 1 at its 4th step (epoch 2) from inside the process: the hook is this test's, not the product's.
KILL_RANK_1 = """
import os, signal
if os.environ.get("RANK") == "1" and os.environ.get("NECTARGAN_TEST_KILL"):
    import nectargan_core.training.step as step
    real, calls = step.GANStep.__call__, [0]
    def call(self, x, y):
        calls[0] += 1
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, x, y)
    step.GANStep.__call__ = call
"""


@pytest.fixture(scope="module")
def uninterrupted(sample_root, tmp_path_factory) -> Path:
    """Three epochs in two processes, never stopped."""
    project = _project(sample_root, tmp_path_factory.mktemp("uninterrupted"), **{"generator.epochs": 3})
    done = _run(["nectargan", "train", "-s", "train.nproc_per_node=2"], project)
    assert done.returncode == 0, done.stderr[-3000:]
    return project


@pytest.mark.slow
@pytest.mark.parametrize("again", [2, 1])
def test_a_dying_rank_fails_the_job_then_the_continue_finishes(sample_root, tmp_path, uninterrupted, again):
    project = _project(sample_root, tmp_path, **{"generator.epochs": 3})
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_RANK_1)
    env = {"PYTHONPATH": f"{hook}:{os.environ.get('PYTHONPATH', '')}", "NECTARGAN_TEST_KILL": "1"}
    failed = _run(["nectargan", "train", "-s", "train.nproc_per_node=2"], project, env)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "error: a training process failed: rank 1" in failed.stderr and "signal SIGKILL" in failed.stderr
    assert "Traceback" not in failed.stderr.split("error: a training process failed")[-1]
    client, experiment = _client(project)
    (run,) = client.search_runs([experiment])
    assert run.info.status in ("FAILED", "KILLED")  # never left RUNNING
    assert [row["epoch"] for row in epoch_rows(project / "outputs" / "train")] == ["1"]

    # Written by 2 processes, continued by 2 (bit for bit the run that never stopped) or by 1 (the
    # same global batches, so the same optimisation, to float rounding).
    resume = ["nectargan", "train", "-s", "train.continue_train=true", "-s", f"train.nproc_per_node={again}"]
    done = _run(resume, project)
    assert done.returncode == 0, done.stderr[-3000:]
    (same,) = client.search_runs([experiment])
    assert same.info.run_id == run.info.run_id and same.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/g")] == [1, 2, 3]
    ours = losses(epoch_rows(project / "outputs" / "train"))
    theirs = losses(epoch_rows(uninterrupted / "outputs" / "train"))
    a = load_checkpoint(project / "outputs" / "train" / "checkpoints" / "latest.pt")
    b = load_checkpoint(uninterrupted / "outputs" / "train" / "checkpoints" / "latest.pt")
    if again == 2:
        assert ours == theirs
        assert all(torch.equal(a[net][k], b[net][k]) for net in ("generator", "discriminator") for k in a[net])
    else:
        for mine, reference in zip(ours, theirs, strict=True):
            for key, value in mine.items():
                assert (float(value) if value else 0.0) == pytest.approx(
                    float(reference[key]) if reference[key] else 0.0, rel=1e-4
                ), key
