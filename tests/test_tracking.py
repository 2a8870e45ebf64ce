import csv
import hashlib
import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException

from nectargan_core.checkpoint import CheckpointError
from nectargan_core.inference.generator import load_generator
from nectargan_core.inference.inputs import InputError, check_model_input
from nectargan_core.models import ModelInfo
from nectargan_core.settings import with_changes
from nectargan_core.stages import evaluate_stage, examples_stage, train_stage
from nectargan_core.tracking.provenance import TrainingData, training_data
from nectargan_core.tracking.registry import RegistryError, download_checkpoint, input_example, model_metadata
from nectargan_core.tracking.tracker import Tracker, TrackingUnavailable, settings_params

from .helpers import epoch_rows, tiny_settings

ROOT = Path(__file__).resolve().parents[1]


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
    (data,) = run.inputs.dataset_inputs  # the runs table's Dataset column
    root = Path(settings.data.root).resolve()
    assert (data.dataset.name, json.loads(data.dataset.source)) == (root.name, {"uri": str(root)})
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


def test_the_data_digest_is_dvcs_md5_while_it_fits_the_folder(sample_root, tmp_path):
    settings = tiny(sample_root, tmp_path)
    own = training_data(settings, tmp_path)  # no dvc.lock: names, sizes and mtimes
    files = [path for path in sample_root.rglob("*") if path.is_file()]
    out = {"path": os.path.relpath(sample_root, tmp_path), "md5": "0123abcd.dir", "nfiles": len(files)}
    out["size"] = sum(path.stat().st_size for path in files)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"prepare": {"outs": [out]}}}))
    assert training_data(settings, tmp_path) == TrainingData(sample_root.name, "0123abcd.dir", str(sample_root))
    out["nfiles"] += 1  # the folder changed since DVC recorded it: DVC's md5 no longer says what trained
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"prepare": {"outs": [out]}}}))
    assert training_data(settings, tmp_path) == own and len(own.digest) == 32


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
    assert signature.inputs is None  # the model checks its input (one-line reasons), not MLflow's schema
    assert signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 3, -1, -1)}
    local = Path(mlflow.artifacts.download_artifacts("models:/nectargan-generator/1", dst_path=str(project / "m")))
    assert (local / "generator_model.py").read_text().startswith('"""The registered model')  # code, not a pickle
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()
    assert "model_version: '1'" in (local / "registered_model_meta").read_text()
    assert not list(local.rglob("*.pkl"))
    assert "torch==" in (local / "requirements.txt").read_text()


SERVE_LOAD = ROOT / "benchmarks" / "serve_load.py"


def _serve_load():
    """benchmarks/serve_load.py as a module (it starts locust in a subprocess; importing it imports no locust)."""
    if "serve_load" not in sys.modules:
        spec = importlib.util.spec_from_file_location("serve_load", SERVE_LOAD)
        sys.modules["serve_load"] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up there
        spec.loader.exec_module(sys.modules["serve_load"])
    return sys.modules["serve_load"]


TINY_INFO = ModelInfo(input_channels=3, output_channels=3, crop_size=32, side_multiple=16)
GOOD = np.zeros((2, 3, 32, 48), np.float32)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([[[[0.5, "x"]]]], "inputs must be numbers (float32 in [-1, 1]); got strings"),
        (GOOD > 0, "inputs must be numbers (float32 in [-1, 1]); got booleans"),
        ([[[[0.0, 0.0]], [[0.0]]]], "inputs must be a regular N x C x H x W array; the nested lists are ragged"),
        (GOOD[0], "inputs must be N x 3 x H x W (4 dimensions); got shape 3 x 32 x 48"),
        (GOOD[:, :1], "inputs must have 3 channels (N x 3 x H x W); got shape 2 x 1 x 32 x 48"),
        (GOOD[:0], "a request holds 1 to 16 images; got 0 (split the batch)"),
        (np.zeros((17, 3, 16, 16)), "a request holds 1 to 16 images; got 17 (split the batch)"),
        (np.zeros((1, 3, 100, 100)), "height and width must be multiples of 16; got 100 x 100"),
        (GOOD[..., :0], "height and width must be multiples of 16; got 32 x 0"),
        (GOOD + np.nan, "values must be finite numbers in [-1, 1]; got NaN or infinity"),
        (GOOD - 1.5, "values must be in [-1, 1]; got min -1.5, max -1.5"),
    ],
)
def test_serve_input_check_names_the_problem(value, reason):
    with pytest.raises(InputError) as info:
        check_model_input(value, TINY_INFO)
    assert str(info.value) == reason


def test_serve_input_check_passes_good_input_as_float32():
    assert check_model_input(GOOD, TINY_INFO) is GOOD  # no copy
    ints = check_model_input(np.ones((1, 3, 16, 16), np.int64), TINY_INFO)
    assert ints.dtype == np.float32 and ints.max() == 1.0
    assert check_model_input(np.zeros((4, 3, 16, 16)), TINY_INFO, max_batch=4).dtype == np.float32
    with pytest.raises(InputError, match="got 5"):
        check_model_input(np.zeros((5, 3, 16, 16)), TINY_INFO, max_batch=4)


def test_the_pyfunc_refuses_bad_input_with_one_line(trained):
    model = mlflow.pyfunc.load_model("models:/nectargan-generator/1")
    with pytest.raises(MlflowException) as info:
        model.predict(np.zeros((1, 3, 36, 36), np.float32))  # the tiny model's multiple is 8
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert info.value.message == "height and width must be multiples of 8; got 36 x 36"
    info.value.message = f"Failed to predict data '{np.zeros((2, 2))}'. \nError: {info.value.message}"  # as the server
    assert info.value.message == "height and width must be multiples of 8; got 36 x 36"


@pytest.fixture(scope="module")
def served(trained):
    """`mlflow models serve` of the fixture's version 1 on a free loopback port: (url, server process, result)."""
    project, _, result, tracker = trained
    server, url = _serve_load().start_server(tracker.uri, "models:/nectargan-generator/1", project / "serve.log")
    try:
        yield url, server, result
    finally:
        server.terminate()
        server.wait(timeout=30)


# One bad request of each kind: (body or array, the answer's one-line message); the tiny model's multiple is 8.
BAD_REQUESTS = [
    (np.zeros((3, 32, 32)), "inputs must be N x 3 x H x W (4 dimensions); got shape 3 x 32 x 32"),
    (np.zeros((1, 1, 32, 32)), "inputs must have 3 channels (N x 3 x H x W); got shape 1 x 1 x 32 x 32"),
    (np.zeros((1, 3, 100, 100)), "height and width must be multiples of 8; got 100 x 100"),
    (np.full((1, 3, 8, 8), "a"), "inputs must be numbers (float32 in [-1, 1]); got strings"),
    (np.full((1, 3, 8, 8), 2.0), "values must be in [-1, 1]; got min 2, max 2"),
    (np.zeros((17, 3, 8, 8)), "a request holds 1 to 16 images; got 17 (split the batch)"),
]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(served):
    url, _server, result = served
    example = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    generator = load_generator(result.checkpoint, torch.device("cpu")).generator
    with torch.no_grad():
        expected = generator(torch.from_numpy(example)).numpy()
    status, answer = _post(url, json.dumps({"inputs": example.tolist()}).encode())
    assert status == 200
    assert np.abs(np.asarray(answer["predictions"], np.float32) - expected).max() < 1e-5
    for array, message in BAD_REQUESTS:  # 400 with the reason on one line, no traceback
        status, answer = _post(url, json.dumps({"inputs": array.tolist()}).encode())
        assert (status, answer["error_code"], answer["message"]) == (400, "INVALID_PARAMETER_VALUE", message)
        assert "stack_trace" not in answer
    status, answer = _post(url, b"not json")  # MLflow answers before the model: it echoes the body after a newline
    assert status == 400 and answer["message"].startswith("Invalid input. Ensure that input is a valid JSON")
    assert "stack_trace" not in answer
    status, answer = _post(url, json.dumps({"inputs": example.tolist()}).encode())  # still serving
    assert status == 200 and np.abs(np.asarray(answer["predictions"], np.float32) - expected).max() < 1e-5


@pytest.mark.slow
def test_serve_load_eight_users_all_answered_memory_bounded(served):
    url, server, _ = served
    load = _serve_load().run_load(url, server.pid, size=32, users=8, requests=32, batch=2, time_limit_s=180)
    assert load.errors == {} and len(load.latencies_ms) == 32, load.log  # every answer 200, 2 x 3 x 32 x 32, in [-1, 1]
    assert load.rss_after_mib < 1.25 * load.rss_before_mib + 64, (load.rss_before_mib, load.rss_after_mib)


def test_a_new_store_is_a_copy_of_the_migrated_empty_one(tmp_path, monkeypatch):
    """New embedded stores copy one migrated empty store (made once per MLflow version in the cache);
    each still gets MLflow's Default experiment and ours with its artifacts beside it. Without a
    writable cache MLflow migrates the new file itself."""
    import sqlite3

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tiny_settings(tmp_path).tracking
    template = tmp_path / "cache" / "nectargan" / f"mlflow-{mlflow.__version__}-empty.db"
    made = None
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tracker = Tracker.connect(cfg, tmp_path / name)
        made = made or template.stat().st_mtime_ns
        assert template.stat().st_mtime_ns == made  # made once, then copied
        found = {e.name: e.artifact_location for e in tracker.client.search_experiments()}
        assert found == {"Default": found["Default"], cfg.experiment: (tmp_path / name / "mlruns").as_uri()}
    with sqlite3.connect(template) as db:
        assert db.execute("select count(*) from experiments").fetchone() == (0,)  # tables only
    assert not list(template.parent.glob(".*.tmp")) and not list((tmp_path / "b").glob(".*.tmp"))

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "c").mkdir()
    tracker = Tracker.connect(cfg, tmp_path / "c")
    assert cfg.experiment in {e.name for e in tracker.client.search_experiments()}
