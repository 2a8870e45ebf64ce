"""The Prefect flow under the Prefect test harness, with a real MLflow store and tiny settings."""

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import pytest
from mlflow import MlflowClient
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import pipeline
from nectargan_core.checkpoint import CheckpointError
from nectargan_core.settings import with_changes
from nectargan_core.tracking.registry import RegistryError

from .helpers import epoch_rows, tiny_settings

pytestmark = pytest.mark.slow  # starts a Prefect server


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):  # the 30 s default is short on a busy 2-core machine
        yield


@pytest.fixture(scope="module")
def first_run(harness, sample_root, tmp_path_factory):
    project = tmp_path_factory.mktemp("flow-project")
    result = pipeline(settings=tiny_settings(sample_root), export_onnx=True, project_dir=str(project))
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}", f"sqlite:///{project / 'mlflow.db'}")
    return project, result, client


def test_the_flow_runs_every_stage(first_run):
    project, result, client = first_run
    assert result["last_epoch"] == 2 and result["model_version"] == "1"
    assert set(result["metrics"]) == {"l1", "l2", "psnr", "ssim", "sobel", "laplacian"}
    for path in (
        "outputs/validation/validation.csv",
        "outputs/train/checkpoints/latest.pt",
        "outputs/train/snapshots/epoch_0002.pt",
        "outputs/examples/epoch_0002_sample_01.png",
        "outputs/eval/metrics.json",
    ):
        assert (project / path).exists(), path
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["prefect_flow_run_id"] not in ("", "None")
    assert "eval/ssim" in run.data.metrics
    summary = Artifact.get("run-summary")
    assert result["mlflow_run_id"] in summary.data and "## Evaluation on test" in summary.data
    report = Artifact.get("evaluation-report").data
    assert "## Worst by SSIM" in report and "](data:image/png;base64," in report  # images the UI can show
    assert result["onnx"] == str(project / "outputs" / "export" / "generator.onnx")
    assert Artifact.get("dataset-validation").type == "table"


def test_continue_from_the_registered_version(first_run, sample_root):
    project, first, client = first_run
    result = pipeline(
        settings=tiny_settings(sample_root),
        continue_from="models:/nectargan-generator@current",
        more_epochs=2,
        project_dir=str(project),
    )
    assert result["last_epoch"] == 4 and result["model_version"] == "2"
    assert [row["epoch"] for row in epoch_rows(project / "outputs" / "train")] == ["3", "4"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["parent_model_version"] == "1"
    assert run.data.tags["parent_run_id"] == first["mlflow_run_id"]
    assert run.data.params["train.continue_from"] == "models:/nectargan-generator@current"
    assert run.data.params["train.generator.epochs"] == "4"


def _task_states(flow_state) -> dict[str, object]:
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return {run.task_key.rsplit("-", 1)[0]: run.state for run in client.read_task_runs(flow_run_filter=flow_filter)}


def test_missing_alias_fails_before_training_and_names_what_exists(first_run, sample_root):
    project, _, _ = first_run
    with pytest.raises(RegistryError, match=r"no alias 'nightly'; aliases: current -> \d"):
        pipeline(
            settings=tiny_settings(sample_root),
            continue_from="models:/nectargan-generator@nightly",
            project_dir=str(project),
        )


def test_a_failed_task_and_its_flow_run_carry_the_one_line_message(first_run, sample_root):
    project, _, _ = first_run
    state = pipeline(
        settings=tiny_settings(sample_root),
        continue_from="models:/nectargan-generator@nightly",
        project_dir=str(project),
        return_state=True,
    )
    assert state.is_failed()
    assert state.message.startswith("models:/nectargan-generator@nightly") and "aliases: current ->" in state.message
    fetch = _task_states(state)["fetch_task"]
    assert fetch.is_failed() and fetch.message == state.message  # the CLI's line, not a traceback


def test_mismatched_architecture_fails_before_training(first_run, sample_root):
    project, _, _ = first_run
    wide = tiny_settings(sample_root, project / "outputs" / "wide", generator={"epochs": 9, "epochs_decay": 0})
    wide = with_changes(wide, {"model.generator.features": 16})
    with pytest.raises(CheckpointError, match=r"model\.generator\.features: checkpoint 8, settings 16"):
        pipeline(settings=wide, continue_from="models:/nectargan-generator/1", project_dir=str(project))
    assert not (project / "outputs" / "wide" / "epochs.csv").exists()
    summary = Artifact.get("run-summary")
    assert "NectarGAN run failed" in summary.data and "CheckpointError" in summary.data
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}", f"sqlite:///{project / 'mlflow.db'}")
    newest = client.search_runs(
        [client.get_experiment_by_name("nectargan").experiment_id], order_by=["attributes.start_time DESC"]
    )[0]
    assert newest.info.status == "FAILED"


def test_the_train_task_trains_in_two_processes(first_run, sample_root):
    project, _, client = first_run
    settings = tiny_settings(sample_root, project / "outputs" / "ddp", nproc_per_node=2)
    result = pipeline(settings=settings, project_dir=str(project))
    assert result["last_epoch"] == 2 and result["model_version"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["train.nproc_per_node"] == "2"
    assert run.data.tags["prefect_flow_run_id"] not in ("", "None")  # the task's tag reached the processes
    assert [row["epoch"] for row in epoch_rows(project / "outputs" / "ddp")] == ["1", "2"]
