"""SIGTERM to the real processes a user starts: `nectargan train`, `dvc repro` and `python -m flows`.

Each stops training at a step boundary, marks the MLflow run KILLED, says how to continue and
leaves no child process behind; the continue then finishes in the same MLflow run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from .helpers import tiny_settings

pytestmark = pytest.mark.slow  # real processes, each trains for a few seconds

BIN = Path(sys.executable).parent
# Epochs of a run that is stopped and then continued: SIGTERM goes straight to the trainer, so 7 epochs
# after the first checkpoint leave room; the stop through dvc (a launcher that dies) keeps the default.
CONTINUED = 8


def _project(sample_root: Path, tmp_path: Path, epochs: int = 20) -> Path:
    """A project folder whose params.yaml trains long enough to be interrupted after the first checkpoint.

    A test that continues the run asks for fewer epochs (CONTINUED): the continue trains all the rest."""
    settings = tiny_settings(sample_root, **{"generator.epochs": epochs})
    (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(project / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a fresh server's migrations, on a busy machine
    }


def _wait_for_epoch(project: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until the first checkpoint is written (training is under way, and can be continued); the flow starts
    a temporary Prefect server first, which takes long on a busy machine."""
    checkpoint = project / "outputs" / "train" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def _runs(project: Path) -> list:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    return client.search_runs([client.get_experiment_by_name("nectargan").experiment_id])


def _assert_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if psutil.pid_exists(p)]}"
        time.sleep(0.2)


def _continue(project: Path) -> None:
    args = ["nectargan", "train", "-s", "train.continue_train=true"]
    done = subprocess.run(args, cwd=project, env=_env(project), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sigterm_to_nectargan_train_stops_at_a_step_and_the_continue_reopens_the_run(sample_root, tmp_path):
    project = _project(sample_root, tmp_path, CONTINUED)
    train = subprocess.Popen(["nectargan", "train"], cwd=project, env=_env(project), stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(project, train)
    train.send_signal(signal.SIGTERM)
    _, err = train.communicate(timeout=60)
    assert train.returncode == 130, err[-3000:]
    assert "SIGTERM: stopping after this step" in err and "continue with -s train.continue_train=true" in err
    assert "Traceback" not in err
    (run,) = _runs(project)
    assert run.info.status == "KILLED"
    _continue(project)
    (run,) = _runs(project)
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])  # dash keeps itself between dvc and the stage; bash execs
def test_sigterm_to_dvc_repro_stops_its_train_stage(sample_root, tmp_path, shell):
    if not Path(shell).exists():
        pytest.skip(f"{shell} is not installed")
    project = _project(sample_root, tmp_path)
    env = {**_env(project), "SHELL": shell}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=project, env=env, check=True)
    (project / "dvc.yaml").write_text("stages:\n  train:\n    cmd: nectargan train\n")
    repro = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_epoch(project, repro)
    stage = [p.pid for p in psutil.Process(repro.pid).children(recursive=True)]
    assert stage, "dvc runs the stage in a child process"
    repro.send_signal(signal.SIGTERM)
    repro.wait(timeout=30)
    _assert_gone(stage)  # the stage does not train on, unowned
    (run,) = _runs(project)
    assert run.info.status == "KILLED"


def test_sigterm_to_the_flow_stops_the_temporary_prefect_server(sample_root, tmp_path):
    project = _project(sample_root, tmp_path, CONTINUED)
    env = {key: value for key, value in _env(project).items() if key != "PREFECT_API_URL"}
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows", "--project-dir", str(project)],
        cwd=project,  # not the checkout: what a `make run` left there must not matter
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_epoch(project, flow)
    children = [p.pid for p in psutil.Process(flow.pid).children(recursive=True)]
    assert any("uvicorn" in " ".join(psutil.Process(pid).cmdline()) for pid in children)
    flow.send_signal(signal.SIGTERM)
    _, err = flow.communicate(timeout=60)
    assert flow.returncode == 130, err[-3000:]
    assert "SIGTERM: stopping after this step" in err  # not broken off in the middle of a write
    assert "interrupted: the MLflow run is marked KILLED" in err
    _assert_gone(children)  # Prefect's temporary server, and any data workers
    (run,) = _runs(project)
    assert run.info.status == "KILLED"
    _continue(project)
    (run,) = _runs(project)
    assert run.info.status == "FINISHED"


def test_ctrl_c_in_the_terminal_stops_the_flow_and_its_temporary_server(sample_root, tmp_path):
    """Ctrl+C reaches the terminal's whole process group: the temporary server must not die under the flow."""
    project = _project(sample_root, tmp_path)
    env = {key: value for key, value in _env(project).items() if key != "PREFECT_API_URL"}
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows", "--project-dir", str(project)],
        cwd=project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal gives the command it runs
    )
    try:
        _wait_for_epoch(project, flow)
        children = [p.pid for p in psutil.Process(flow.pid).children(recursive=True)]
        assert any("uvicorn" in " ".join(psutil.Process(pid).cmdline()) for pid in children)
        os.killpg(flow.pid, signal.SIGINT)  # what Ctrl+C sends
        asked = time.monotonic()
        _, err = flow.communicate(timeout=90)  # the server shares the stderr pipe: its end too
    finally:  # a flow that hangs is not left behind (the server dies with it)
        if flow.poll() is None:
            os.killpg(flow.pid, signal.SIGKILL)
            flow.wait()
    assert flow.returncode == 130, err[-3000:]
    assert time.monotonic() - asked < 45, err[-3000:]
    assert "SIGINT: stopping after this step" in err and "interrupted: the MLflow run is marked KILLED" in err
    assert "ConnectError" not in err and "Traceback" not in err, err[-3000:]
    _assert_gone(children)
    (run,) = _runs(project)
    assert run.info.status == "KILLED"
