import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from nectargan_core.checkpoint import CheckpointError
from nectargan_core.inference.generator import load_generator
from nectargan_core.settings import with_changes
from nectargan_core.stages import evaluate_stage, examples_stage, train_stage
from nectargan_core.tracking.registry import RegistryError, download_checkpoint, input_example, model_metadata
from nectargan_core.tracking.tracker import Tracker, TrackingUnavailable, settings_params

from .helpers import epoch_rows, tiny_settings

BIN = Path(sys.executable).parent


def tiny(root, project, **train):
    return tiny_settings(root, project / "outputs" / "train", **train)


@pytest.fixture(scope="module")
def trained(sample_root, tmp_path_factory):
    """One tracked 2-epoch run in its own project folder (the embedded SQLite default)."""
    project = tmp_path_factory.mktemp("project")
    settings = tiny(sample_root, project, snapshot="full")
    settings = with_changes(settings, {"tracking.log_checkpoints": "all"})
    tracker = Tracker.connect(settings.tracking, project)
    result = train_stage(settings, tracker, project)
    return project, settings, result, tracker


def test_the_run_records_every_setting_and_per_epoch_metrics(trained):
    project, settings, result, tracker = trained
    client = tracker.client
    assert (project / "mlflow.db").exists() and (project / "mlruns").is_dir()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == settings_params(settings)
    assert run.data.params["train.loss.l1"] == "100.0" and run.data.params["train.generator.epochs"] == "2"
    for key in (
        "loss/d",
        "loss/g",
        "loss/l1",
        "loss/l1_weighted",
        "weight/l1",
        "weight/sobel",
        "lr/g",
        "lr/d",
        "epoch_seconds",
        "images_per_s",
    ):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    rows = epoch_rows(project / "outputs" / "train")
    l1 = {m.step: m.value for m in client.get_metric_history(result.run_id, "loss/l1")}
    assert l1[2] == pytest.approx(float(rows[1]["l1"]))
    assert run.data.tags["params_hash"] and run.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"images", "snapshots"} <= artifacts and "checkpoints" not in artifacts  # the model holds the state
    snapshots = {a.path for a in client.list_artifacts(result.run_id, "snapshots")}
    assert snapshots == {"snapshots/epoch_0001.pt", "snapshots/epoch_0002.pt"}  # log_checkpoints: all
    images = [a.path for a in client.list_artifacts(result.run_id, "images")]
    assert any("examples~sample_00+step+2" in path for path in images)
    summary = json.loads(result.summary.read_text())
    assert summary["mlflow_run_id"] == result.run_id and summary["model_version"] == "1"


def test_final_checkpoint_is_a_registered_version_with_alias(trained):
    project, _settings, result, tracker = trained
    client = tracker.client
    version = client.get_model_version_by_alias("nectargan-generator", "current")
    assert str(version.version) == result.model_version == "1"
    assert version.run_id == result.run_id
    assert version.tags["epoch"] == "2" and version.tags["run_id"] == result.run_id
    assert set(version.tags) >= {"params_hash", "git_commit", "dvc_md5"}
    downloaded = download_checkpoint(tracker, "models:/nectargan-generator@current", project / "dl")
    assert downloaded.checkpoint.read_bytes() == result.checkpoint.read_bytes()  # the final full state
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert [a.path for a in mlflow.artifacts.list_artifacts(f"{model.artifact_location}/artifacts")] == [
        "artifacts/latest.pt"
    ]  # one copy in MLflow: the model's own artifact is the full state

    assert hashlib.md5(result.checkpoint.read_bytes()).hexdigest() == version.tags["dvc_md5"]


def test_examples_and_evaluation_log_into_the_training_run(trained):
    project, settings, result, tracker = trained
    client = tracker.client
    strips = examples_stage(settings, tracker, project / "outputs" / "examples")
    assert [p.name for p in strips] == ["epoch_0002_sample_00.png", "epoch_0002_sample_01.png"]
    evaluation = evaluate_stage(settings, tracker, project / "outputs" / "eval")
    assert evaluation.split == "test" and evaluation.epoch == 2
    metrics = json.loads((project / "outputs" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"split", "images", "epoch", "l1", "l2", "psnr", "ssim", "sobel", "laplacian"}
    assert metrics["images"] == 2 and 0 < metrics["ssim"] < 1 and metrics["psnr"] > 0
    with evaluation.table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["test_0000.png", "test_0001.png"]
    assert float(metrics["l1"]) == pytest.approx(sum(float(r["l1"]) for r in rows) / 2)
    run = client.get_run(result.run_id)
    assert run.data.metrics["eval/l1"] == pytest.approx(metrics["l1"])
    assert {a.path for a in client.list_artifacts(result.run_id, "examples")} == {"examples/final"}


def test_continue_from_a_registered_model(trained, sample_root):
    project, _settings, result, tracker = trained
    client = tracker.client
    child = tiny(
        sample_root,
        project,
        continue_train=True,
        continue_from="models:/nectargan-generator@current",
        generator={"epochs": 3, "epochs_decay": 0},
    )
    child = with_changes(child, {"train.output_dir": project / "outputs" / "child", "train.loss.l1": 50.0})
    continued = train_stage(child, tracker, project)
    assert continued.last_epoch == 3 and continued.model_version == "2"
    rows = epoch_rows(project / "outputs" / "child")
    assert [r["epoch"] for r in rows] == ["3"] and rows[0]["l1_weight"] == "50.0"
    run = client.get_run(continued.run_id)
    assert run.data.tags["parent_model_version"] == "1" and run.data.tags["parent_run_id"] == result.run_id
    assert run.data.params["train.continue_from"] == "models:/nectargan-generator@current"
    assert str(client.get_model_version_by_alias("nectargan-generator", "current").version) == "2"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/nope@current", "no registered model 'nope'; registered models: nectargan-generator"),
        ("models:/nectargan-generator@staging", "no alias 'staging'; aliases: current -> "),
        ("models:/nectargan-generator/99", "has no version 99; versions: 1"),
        ("models:/nectargan-generator", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_missing_registry_entries_name_what_exists(trained, uri, message):
    project, _, _, tracker = trained
    with pytest.raises(RegistryError) as info:
        download_checkpoint(tracker, uri, project / "never")
    assert message in str(info.value)
    assert not (project / "never").exists()


def test_continue_with_another_architecture_fails_before_training(trained, sample_root):
    project, _, _, tracker = trained
    client = tracker.client
    wide = tiny(
        sample_root,
        project,
        continue_train=True,
        continue_from="models:/nectargan-generator/1",
        generator={"epochs": 4, "epochs_decay": 0},
    )
    wide = with_changes(wide, {"model.generator.features": 16, "train.output_dir": project / "outputs" / "wide"})
    with pytest.raises(CheckpointError, match=r"model\.generator\.features: checkpoint 8, settings 16"):
        train_stage(wide, tracker, project)
    failed = client.search_runs(
        [client.get_experiment_by_name("nectargan").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert failed.info.status == "FAILED"
    assert not (project / "outputs" / "wide" / "epochs.csv").exists()


def test_a_tracking_server_that_is_down_fails_fast(sample_root, tmp_path):
    settings = with_changes(tiny(sample_root, tmp_path), {"tracking.uri": "http://127.0.0.1:9"})  # nothing listens
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="no MLflow server answers"):
        Tracker.connect(settings.tracking, tmp_path)
    assert time.monotonic() - started < 10


def test_load_epoch_picks_another_checkpoint_of_the_parent_run(trained, sample_root):
    project, _, _result, tracker = trained
    first = download_checkpoint(tracker, "models:/nectargan-generator/1", project / "e1", epoch=1)
    assert first.epoch == 1 and first.checkpoint.name == "epoch_0001.pt"
    assert first.checkpoint.read_bytes() == (project / "outputs/train/snapshots/epoch_0001.pt").read_bytes()
    with pytest.raises(RegistryError, match="has no checkpoint for epoch 7; logged epochs: 1, 2 "):
        download_checkpoint(tracker, "models:/nectargan-generator/1", project / "e7", epoch=7)


def test_the_registered_version_is_an_mlflow_model(trained):
    project, _, result, _tracker = trained
    model = mlflow.pyfunc.load_model("models:/nectargan-generator/1")  # the fixture's run
    example = input_example(model_metadata(load_generator(result.checkpoint, torch.device("cpu")).settings, 2))
    generated = model.predict(example)
    assert generated.shape == (1, 3, 32, 32) and generated.dtype == np.float32
    trained_generator = load_generator(result.checkpoint, torch.device("cpu")).generator
    with torch.no_grad():
        assert np.array_equal(generated, trained_generator(torch.from_numpy(example)).numpy())
    signature = model.metadata.signature
    assert signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 3, -1, -1)}
    local = Path(mlflow.artifacts.download_artifacts("models:/nectargan-generator/1", dst_path=str(project / "m")))
    assert (local / "generator_model.py").read_text().startswith('"""The registered model')  # code, not a pickle
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()
    assert "model_version: '1'" in (local / "registered_model_meta").read_text()
    assert not list(local.rglob("*.pkl"))
    assert "torch==" in (local / "requirements.txt").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(trained):
    project, _, result, tracker = trained
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracker.uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = project / "serve.log"
    with log.open("w") as handle:
        server = subprocess.Popen(
            [
                *(str(BIN / "mlflow"), "models", "serve", "-m", "models:/nectargan-generator/1"),
                *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        example = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": example.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
        generator = load_generator(result.checkpoint, torch.device("cpu")).generator
        with torch.no_grad():
            expected = generator(torch.from_numpy(example)).numpy()
        assert answer.shape == (2, 3, 32, 32) and np.abs(answer - expected).max() < 1e-5
    finally:
        server.terminate()
        server.wait(timeout=30)
