"""The team path against real servers on loopback (tests/team_stack.py): MLflow on PostgreSQL with S3
artifacts, Prefect's server on PostgreSQL with a process work pool and a worker, and the compose
file those servers come from. The DVC S3 remote test is beside the pipeline test it builds on
(test_pipeline_e2e.py)."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import psycopg
import pytest
import yaml
from mlflow import MlflowClient

from nectargan_core.cli import main
from nectargan_core.launch import TrainRequest, start_training
from nectargan_core.layout import RunPaths
from nectargan_core.settings import Settings
from nectargan_core.tracking.journal import ServerAway
from nectargan_core.tracking.tracker import OUTAGE_BOUNDS, VAL_CURVES_NAME
from nectargan_core.training.callbacks import TrainingCallback

from .helpers import tiny_settings
from .team_stack import (
    COMPOSE,
    ROOT,
    Postgres,
    bucket_names,
    compose,
    documented,
    env_example,
    expand,
    readme_commands,
    s3_objects,
    service,
)

BIN = Path(sys.executable).parent
MODEL = "nectargan-generator"
MODEL_OF_TEAM = "team-generator"  # the server test's own registry entry (the worker test's flow uses MODEL)


def _dsn(team_env, database: str) -> str:
    values = team_env.values
    return (
        f"host=127.0.0.1 port={values['POSTGRES_PORT']} dbname={database} "
        f"user={values['POSTGRES_USER']} password={values['POSTGRES_PASSWORD']}"
    )


def _leaks(folder: Path, secrets: list[str]) -> list[str]:
    """Files under ``folder`` that hold any of ``secrets``."""
    found = []
    for path in (p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path}: {secret[:4]}..." for secret in secrets if secret.encode() in data]
    return found


def _run_records(client: MlflowClient, experiment_id: str, folder: Path) -> Path:
    """Everything MLflow keeps of the experiment's runs, written out: params, tags, metric names, artifacts."""
    folder.mkdir()
    for run in client.search_runs([experiment_id]):
        run_folder = folder / run.info.run_id
        run_folder.mkdir()
        record = {"params": run.data.params, "tags": run.data.tags, "metrics": sorted(run.data.metrics)}
        (run_folder / "record.json").write_text(json.dumps(record))
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(run_folder / "artifacts"))
    return folder


class DatabaseRestart(TrainingCallback):
    """Runs before the MLflow recorder: PostgreSQL stops after epoch 1 (the server stays up and answers
    503), is back for epoch 2 (its records and epoch 1's go in), and stops again once epoch 2 is logged,
    so the registration and the run's end find it away."""

    def __init__(self, cluster: Postgres) -> None:
        self.cluster, self.down = cluster, False
        self.ended: float | None = None

    def _set(self, down: bool) -> None:
        (self.cluster.stop if down else self.cluster.start)()
        self.down = down

    def on_epoch_end(self, summary) -> None:
        self._set(down=summary.epoch == 1)

    def on_checkpoint(self, epoch: int, latest: Path, snapshot: Path) -> None:
        if epoch == 2:
            self._set(down=True)
            self.ended = time.monotonic()


@pytest.mark.slow
def test_team_postgres_mlflow_server_train_register_continue_predict_compare_sweep_server_outage_concurrent_runs(
    team_mlflow, team_postgres, team_env, sample_root, tmp_path, monkeypatch, capsys
):
    """The team path on the real servers, with two faults folded in: PostgreSQL behind the MLflow
    server restarts twice in the first training (server_outage: the journal keeps what the server
    could not take, `runs sync` sends it, each epoch once), and the continue trains while a sweep
    registers its best child (concurrent_runs: none fails, the alias ends on the newest version)."""
    settings = tiny_settings(sample_root, **{"discriminator.epochs": 2})
    params = settings.model_dump(mode="json")
    params["tracking"] |= {"uri": team_mlflow, "experiment": "team", "registered_model": MODEL_OF_TEAM}
    settings = Settings.model_validate(params)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    monkeypatch.chdir(tmp_path)
    for name, value in OUTAGE_BOUNDS.items():  # as Tracker.connect sets them, undone after the test
        monkeypatch.setenv(name, value)
    printed = []

    def nectargan(*args: str) -> None:
        code = main(list(args))
        out, err = capsys.readouterr()
        printed.append(out + err)
        assert code == 0, err[-3000:]

    restart = DatabaseRestart(team_postgres)
    paths = RunPaths.of(settings)
    try:
        with pytest.raises(ServerAway) as away:
            start_training(TrainRequest(settings), tmp_path, callbacks=[restart])
        assert restart.ended is not None and time.monotonic() - restart.ended < 60, "the end waited for the database"
        # A sync while the database is still away: one line that names the server and its database.
        assert main(["runs", "sync", "--output-dir", str(paths.root)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert team_mlflow in error and "HTTP 503" in error and "PostgreSQL" in error, error
    finally:
        if restart.down:
            team_postgres.start()
    assert team_mlflow in str(away.value) and "nectargan runs sync --output-dir" in str(away.value)
    kept = [json.loads(line).get("kind") for line in paths.journal.read_text().splitlines()]
    assert kept.count("metrics") == 1 and "register" in kept and kept[-1] == "end"  # epoch 1 went in at epoch 2
    client = MlflowClient(team_mlflow, team_mlflow)
    experiment = client.get_experiment_by_name("team").experiment_id
    (first,) = client.search_runs([experiment])
    assert first.info.status == "RUNNING"  # not finished before its records are in
    nectargan("runs", "sync", "--output-dir", str(paths.root))
    first = client.get_run(first.info.run_id)
    assert first.info.status == "FINISHED" and first.info.artifact_uri.startswith("mlflow-artifacts:")
    for key in ("loss/d", "loss/g", "epoch_seconds"):  # each epoch exactly once
        assert sorted(m.step for m in client.get_metric_history(first.info.run_id, key)) == [1, 2], key
    images = [a.path for a in client.list_artifacts(first.info.run_id, "images") if a.path.endswith(".png")]
    assert len(images) == 2 * settings.train.num_examples
    assert client.get_model_version_by_alias(MODEL_OF_TEAM, "current").run_id == first.info.run_id

    # At once: a continue of the registered checkpoint for one more epoch (a new run whose parent is the
    # first) and, in a process of its own, a sweep that registers its best child. Its children train one
    # after another: each --jobs process costs a torch import, and two processes already share 2 cores.
    nectargan_bin = str(BIN / "nectargan")
    sweep_command = [nectargan_bin, "sweep", "-s", "train.loss.l1=50,100", "--name", "team", "--register-best"]
    sweep = subprocess.Popen(sweep_command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    more = ["-s", "train.generator.epochs=3", "-s", "train.discriminator.epochs=3"]
    try:
        nectargan(
            "train", "-s", "train.continue_train=true", "-s", f"train.continue_from=models:/{MODEL_OF_TEAM}@current",
            *more,
        )  # fmt: skip
    finally:
        swept = sweep.communicate(timeout=600)[0]
    printed.append(swept)
    assert sweep.returncode == 0, swept[-3000:]
    assert "| l1=50 | finished |" in swept and "| l1=100 | finished |" in swept
    versions = client.search_model_versions(f"name='{MODEL_OF_TEAM}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # the first, the continue, the sweep's best
    assert client.get_model_version_by_alias(MODEL_OF_TEAM, "current").version == "3"  # the newest, whoever made it
    (continued,) = [v for v in versions if v.tags["epoch"] == "3"]
    assert client.get_run(continued.run_id).data.params["train.continue_from"] == f"models:/{MODEL_OF_TEAM}@current"
    runs = client.search_runs([experiment])
    assert len(runs) == 2 + 1 + 2  # two trainings, the sweep's parent and its two children
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        if run.data.tags.get("nectargan.sweep_role") != "parent":  # each epoch it trained, once
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/d")]
            assert sorted(steps) == ([3] if run.info.run_id == continued.run_id else [1, 2]), run.info.run_name

    inputs = sample_root / "test"  # aligned A|B pairs: the model's input is the A half
    model = f"models:/{MODEL_OF_TEAM}@current"
    nectargan("predict", "--model", model, "--input", str(inputs), "--pairs", "a", "--out", "predicted")
    assert sorted(p.name for p in (tmp_path / "predicted").iterdir()) == sorted(p.name for p in inputs.iterdir())

    nectargan("compare")
    second = client.get_run(continued.run_id)
    assert first.info.run_name in printed[-1] and second.info.run_name in printed[-1]
    assert (tmp_path / "outputs" / "compare" / "leaderboard.md").is_file()

    # Where the records are: runs in PostgreSQL, artifacts in the S3 bucket, nothing in the project.
    with psycopg.connect(_dsn(team_env, "mlflow")) as connection:
        stored = {row[0] for row in connection.execute("SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active'")}
    assert {run.info.run_id for run in runs} <= stored
    objects = s3_objects(team_env, team_env.values["MLFLOW_BUCKET"])
    assert any(key.endswith(f"/artifacts/{VAL_CURVES_NAME}") for key in objects)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    # No credential in what the runs recorded, nor in anything printed.
    records = _run_records(client, experiment, tmp_path / "records")
    (tmp_path / "records" / "printed.txt").write_text("\n".join(printed))
    assert not _leaks(records, team_env.secrets)


def test_a_tracking_uri_with_credentials_is_refused(sample_root, tmp_path, monkeypatch, capsys):
    settings = tiny_settings(sample_root)
    (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "-s", "tracking.uri=http://ana:s3cret@127.0.0.1:5000"]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri" in err and "MLFLOW_TRACKING_PASSWORD" in err and "s3cret" not in err
    assert main(["compare", "-s", "tracking.uri=https://ghp_t0ken@mlflow.example"]) == 2
    assert "ghp_t0ken" not in capsys.readouterr().err  # a token alone is a credential too
    monkeypatch.setenv("NECTARGAN_TRACKING_URI", "http://ana:s3cret@127.0.0.1:5000")
    assert main(["compare"]) != 0
    err = capsys.readouterr().err
    assert "NECTARGAN_TRACKING_URI holds credentials" in err and "s3cret" not in err


def _api(api: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(
        f"{api}/{path}", data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _project_copy(destination: Path, params: dict) -> Path:
    """This project's tracked files (flows/, prefect.yaml, ...) with ``params`` as params.yaml."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            (destination / name).write_bytes(source.read_bytes())
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return destination


def _epochs_done(epochs_csv: Path) -> int:
    return len(epochs_csv.read_text().splitlines()) - 1 if epochs_csv.exists() else 0


def _restart_mid_training(prefect, out: Path, total: int, worker: subprocess.Popen, log: Path) -> None:
    """Kill the Prefect server once epoch 1 is done (a crash: its answers end at once), keep it away
    until the training has ended (summary.json; it must not wait for the server), then start it again
    on the same port and database."""

    def wait(condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert worker.poll() is None, f"the worker exited while {what}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} took over {timeout:.0f}s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)

    wait(lambda: _epochs_done(out / "epochs.csv") >= 1, "waiting for epoch 1", 300)
    prefect.stop(grace=0)
    assert _epochs_done(out / "epochs.csv") < total, "the training ended before the server stopped: more epochs"
    wait((out / "summary.json").exists, "training with the Prefect server away", 90)
    prefect.start()


@pytest.mark.slow
def test_team_worker_takes_a_deployed_run_from_the_work_pool_to_completed(
    team_prefect, team_mlflow, team_env, sample_root, tmp_path
):
    """The compose worker's path end to end, with the Prefect server killed in the middle of the
    training and started again: the training ends while it is away, and the flow run ends Completed."""
    epochs = 3
    params = tiny_settings(sample_root, **{"generator.epochs": epochs}).model_dump(mode="json")
    project = _project_copy(tmp_path / "project", params)
    _, worker_env = service("worker", {**team_env.values, "NECTARGAN_PROJECT_DIR": str(project)})
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        **worker_env,  # PREFECT_API_URL, NECTARGAN_TRACKING_URI, NECTARGAN_PROJECT_DIR, as the compose worker has them
    }
    api = team_prefect.api
    assert env["PREFECT_API_URL"] == api

    def run(argv: list[str], timeout: float = 300) -> str:
        done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    logs = [run(documented("prefect work-pool create", team_env.values))]
    logs.append(run(documented("env -u NECTARGAN_PROJECT_DIR prefect --no-prompt deploy", team_env.values)))
    deployments = _api(api, "deployments/filter")
    for deployment in deployments:  # the worker's own project folder, resolved when a run starts there
        step = deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
        assert step["directory"] == "{{ $NECTARGAN_PROJECT_DIR }}", deployment["name"]
    assert {d["name"] for d in deployments} == {"train", "nightly-continue", "sweep"}
    assert all(d["work_pool_name"] == "nectargan-gpu" for d in deployments)
    (nightly,) = [d for d in deployments if d["name"] == "nightly-continue"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]

    logs.append(run(documented("prefect deployment run", team_env.values)))
    (flow_run_id,) = re.findall(r"UUID: ([0-9a-f-]{36})", logs[-1])
    # The compose worker's command, once: it takes the run, runs it in a process and waits for it.
    command, _ = service("worker", team_env.values)
    assert command == documented("prefect worker start", team_env.values)
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as out:
        worker = subprocess.Popen([*command, "--run-once"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _restart_mid_training(team_prefect, project / params["train"]["output_dir"], epochs, worker, worker_log)
        assert worker.wait(timeout=600) == 0, worker_log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    logs.append(worker_log.read_text())

    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=30) as response:
        flow_run = json.loads(response.read())
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    with psycopg.connect(_dsn(team_env, "prefect")) as connection:  # the Prefect server keeps it in PostgreSQL
        (state,) = connection.execute("SELECT state_type FROM flow_run WHERE id = %s", (flow_run_id,)).fetchone()
    assert state == "COMPLETED"
    flow_logs = json.dumps(_api(api, "logs/filter", {"limit": 200}))
    (run_id,) = set(re.findall(r"MLflow run ([0-9a-f]{32})", flow_logs))  # the flow run names its MLflow run
    client = MlflowClient(team_mlflow, team_mlflow)  # the worker found the server through NECTARGAN_TRACKING_URI
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss/d")] == list(range(1, epochs + 1))
    assert client.get_model_version_by_alias(MODEL, "current").run_id == run_id

    # No credential in the flow run's logs, its artifacts, or anything the commands printed.
    records = tmp_path / "records"
    records.mkdir()
    (records / "printed.txt").write_text("\n".join(logs))
    (records / "logs.json").write_text(flow_logs)
    (records / "artifacts.json").write_text(json.dumps(_api(api, "artifacts/filter")))
    assert "run-summary" in (records / "artifacts.json").read_text()
    assert not _leaks(records, team_env.secrets)


def test_the_compose_file_is_the_stack_the_team_tests_start():
    services = compose()["services"]
    assert {"postgres", "s3", "buckets", "mlflow", "prefect", "worker"} <= set(services)
    # Published ports on loopback only; every variable is in env.example or has a default.
    for name, spec in services.items():
        assert all(str(port).startswith("127.0.0.1:") for port in spec.get("ports", [])), name
    example = env_example()
    expand(COMPOSE.read_text(), example)  # raises on a variable with neither a value nor a default
    assert "change-me" in example["POSTGRES_PASSWORD"] and "change-me" in example["S3_SECRET_KEY"]
    # No secret spelled out: credentials only through ${...}, never on a server's command line.
    text = COMPOSE.read_text()
    assert not re.search(r"(PASSWORD|SECRET[A-Z_]*|_KEY[A-Z_]*):\s*[^$\s]", text)
    for name in ("mlflow", "prefect", "worker"):
        command, _ = service(name, example)
        assert not any(example[k] in " ".join(command) for k in ("POSTGRES_PASSWORD", "S3_SECRET_KEY")), name
    assert [expand(b, example) for b in bucket_names()] == [example["MLFLOW_BUCKET"], example["DVC_BUCKET"]]
    # The worker serves the pool prefect.yaml deploys to.
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    command, _ = service("worker", example)
    assert pools == {command[command.index("--pool") + 1]}
    # The services built from the Dockerfile find their commands on the image's PATH (the project's venv).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV PATH=/home/nectar/app/.venv/bin:$PATH" in dockerfile
    for name, spec in services.items():
        if spec.get("image") == "nectargan":
            command, _ = service(name, example)
            assert (BIN / command[0]).is_file(), f"{name}: {command[0]} is not installed by the project"
    # A git-ignored .env holds the real values, and never goes into the image.
    assert {".env", "team/.env"} <= set((ROOT / ".dockerignore").read_text().splitlines())
    ignored = subprocess.run(["git", "check-ignore", "-q", "team/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "team/.env must be git-ignored"


def test_the_documented_team_setup_runs_what_the_tests_run():
    commands = readme_commands()
    for prefix in (
        "prefect work-pool create",
        "env -u NECTARGAN_PROJECT_DIR prefect --no-prompt deploy --all",
        "prefect deployment run",
        "prefect worker start",
        "dvc remote add",
        "dvc remote modify",
        "dvc push",
        "dvc pull",
    ):
        assert len([line for line in commands if line.startswith(prefix)]) == 1, prefix
    assert any(line.startswith("docker compose") and "team/compose.yaml" in line for line in commands)
