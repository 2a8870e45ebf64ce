"""Faults a team meets: the tracking server going away in the middle of a training, many trainings
at once on one embedded store, and a Prefect server that does not take an artifact. On the team's
servers, in test_team.py: PostgreSQL restarting under the MLflow server and trainings at once (its
server test), and the Prefect server's restart in the middle of a worker's flow run (its worker test)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nectargan_core.layout import RunPaths
from nectargan_core.settings import with_changes
from nectargan_core.tracking.journal import ServerAway
from nectargan_core.tracking.tracker import OUTAGE_BOUNDS, VAL_CURVES_NAME
from nectargan_core.training.callbacks import TrainingCallback
from nectargan_core.training.summary import RunSummary

from .helpers import tiny_settings
from .team_stack import PlainMlflow


class Outage(TrainingCallback):
    """Runs before the MLflow recorder: the server stops after epoch 1 and restarts in the background,
    epoch 2 waits for it; it stops again after epoch 3 (the last), so the end finds it away."""

    def __init__(self, server: PlainMlflow) -> None:
        self.server, self.restart = server, threading.Thread(target=server.start)
        self.ended: dict[int, float] = {}

    def on_epoch_end(self, summary) -> None:
        self.ended[summary.epoch] = time.monotonic()
        if summary.epoch == 1:
            self.server.stop()
            self.restart.start()
        if summary.epoch == 2:
            self.restart.join()
        if summary.epoch == 3:
            self.server.stop()


def test_server_outage_mid_training_keeps_records_and_logs_each_epoch_once(sample_root, tmp_path, monkeypatch):
    """Training goes on while the server is away; the next epoch sends what was kept, `runs sync`
    what the end could not log, and every epoch's metrics are in MLflow exactly once."""
    from nectargan_core.cli import main
    from nectargan_core.launch import TrainRequest, start_training

    for name, value in OUTAGE_BOUNDS.items():  # as Tracker.connect sets them, undone after the test
        monkeypatch.setenv(name, value)
    server = PlainMlflow(tmp_path)
    server.start()
    out, epochs = tmp_path / "run", 3
    settings = tiny_settings(sample_root, out, **{"generator.epochs": epochs})
    settings = with_changes(settings, {"tracking.uri": server.url})
    outage = Outage(server)
    try:
        with pytest.raises(ServerAway) as away:
            start_training(TrainRequest(settings), tmp_path, callbacks=[outage])
        ended_away = time.monotonic() - outage.ended[epochs]
        message = str(away.value)
        assert server.url in message and f"nectargan runs sync --output-dir {out}" in message
        assert len(message.splitlines()) == 1
        paths = RunPaths(out)
        assert paths.latest.exists() and paths.epochs.exists()  # the training's outputs are complete
        kinds = [record.get("kind") for record in map(json.loads, paths.journal.read_text().splitlines())]
        assert kinds.count("metrics") == 2 and kinds[-1] == "end" and "register" in kinds  # epochs 1 and 3
        run_id = RunSummary.read(paths.summary).mlflow_run_id

        server.start()
        client = MlflowClient(server.url)
        assert client.get_run(run_id).info.status == "RUNNING"  # not finished before its records are in
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss/d")) == [1, 2]  # epoch 2 sent 1
        (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
        monkeypatch.chdir(tmp_path)
        assert main(["runs", "sync", "--output-dir", str(out)]) == 0
        assert main(["runs", "sync", "--output-dir", str(out)]) == 0  # nothing left: sends nothing twice

        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in ("loss/d", "loss/g", "lr/g", "epoch_seconds"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, epochs + 1)), key
        images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
        assert len(images) == epochs * settings.train.num_examples
        version = client.get_model_version_by_alias(settings.tracking.registered_model, settings.tracking.alias)
        assert version.run_id == run_id and version.tags["epoch"] == str(epochs)
        assert RunSummary.read(paths.summary).model_version == str(version.version)
        assert {a.path for a in client.list_artifacts(run_id)} >= {VAL_CURVES_NAME}  # top level: Compare page
        # MLflow's own retries would hold each call for minutes; the journal costs seconds.
        assert ended_away < 60, f"the end with the server away took {ended_away:.0f}s"
    finally:
        server.stop()


def test_concurrent_runs_on_one_fresh_embedded_store(sample_root, tmp_path):
    """4 trainings into 4 folders and a 2-job sweep at once, as `nectargan` processes, on a fresh
    sqlite:///mlflow.db: none fails (no "database is locked", no migration race), every run is
    complete, and the alias ends on the highest version number."""
    settings = tiny_settings(sample_root, tmp_path / "outputs" / "train", **{"generator.epochs": 1})
    (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    nectargan = str(Path(sys.executable).parent / "nectargan")
    commands = [[nectargan, "train", "-s", f"train.output_dir=outputs/t{i}"] for i in range(4)]
    commands.append([nectargan, "sweep", "-s", "train.loss.l1=50,100", "--jobs", "2", "--register-best"])
    env = {key: value for key, value in os.environ.items() if key != "NECTARGAN_TRACKING_URI"}
    processes = [
        subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "database is locked" not in output, output[-3000:]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trainings = [run for run in runs if run.data.tags.get("nectargan.sweep_role") != "parent"]
    assert len(runs) == 7 and len(trainings) == 6  # 4 trainings, the sweep's parent and its 2 children
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in trainings:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/d")] == [1]
    name, alias = settings.tracking.registered_model, settings.tracking.alias
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2, 3, 4, 5]  # each training and the sweep's best child, once
    assert str(client.get_model_version_by_alias(name, alias).version) == "5"


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow or task run")
def test_an_artifact_the_prefect_server_does_not_take_costs_one_line_naming_it(capsys):
    """A Prefect server that is away costs a view (an artifact), never the run: one warning line that
    names the server and what to do, once per artifact, and no exception."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.artifacts import best_effort

    from .team_stack import free_port

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}):
        for _ in range(2):
            assert best_effort("away-check", create_markdown_artifact, "# report", key="away-check") is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert url in lines[0] and "away-check artifact is not updated" in lines[0]
    assert "PREFECT_CLIENT_MAX_RETRIES" in lines[0]
