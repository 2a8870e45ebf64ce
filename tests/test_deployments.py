"""A real Prefect server on a loopback port, the served deployments, and a run triggered through the API."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint

from flows.pipeline import pipeline, sweep_flow
from flows.serve import deployments

from .team_stack import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow  # starts a Prefect server

TRIGGER = """
import json, sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

with get_client(sync_client=True) as client:  # serve registers the deployments as it starts
    for _ in range(120):
        try:
            client.read_deployment_by_name("nectargan-pipeline/nightly-continue")
            break
        except ObjectNotFound:
            time.sleep(0.5)
flow_run = run_deployment("nectargan-pipeline/train", parameters=json.loads(sys.argv[1]), timeout=240)
sweep_run = run_deployment(
    "nectargan-sweep/sweep", parameters={"name": "served", "base": ["train.loss.sobel=3"]}, timeout=240
)
with get_client(sync_client=True) as client:
    nightly = client.read_deployment_by_name("nectargan-pipeline/nightly-continue")
    train = client.read_deployment_by_name("nectargan-pipeline/train")
    sweep = client.read_deployment_by_name("nectargan-sweep/sweep")
    for _ in range(60):  # the server's scheduler service creates the upcoming nightly runs
        scheduled = [r for r in client.read_flow_runs() if r.deployment_id == nightly.id]
        if scheduled:
            break
        time.sleep(0.5)
print(json.dumps({
    "scheduled": sorted((r.state.type.value, r.expected_start_time.strftime("%H:%M")) for r in scheduled),
    "state": flow_run.state.type.value,
    "message": flow_run.state.message,
    "nightly_crons": [s.schedule.cron for s in nightly.schedules],
    "nightly_params": nightly.parameters,
    "limits": [train.global_concurrency_limit.limit, nightly.global_concurrency_limit.limit],
    "settings_schema": sorted(train.parameter_openapi_schema["properties"]),
    "sweep_state": sweep_run.state.type.value,
    "sweep_message": sweep_run.state.message,
    "sweep_schema": sorted(sweep.parameter_openapi_schema["properties"]),
    "sweep_limit": sweep.global_concurrency_limit.limit,
}))
"""


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",  # the browser test below looks at an artifact in the UI
    }
    log = home / "server.log"
    with log.open("w") as handle:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", server, log, timeout=90)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_served_deployment_runs_with_parameters(prefect_env, sample_root, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(root=str(sample_root), load_size=36, crop_size=32, batch_size=2)
    params["model"]["generator"].update(features=8, n_downs=1, dropout_blocks=2)
    params["model"]["discriminator"].update(features=8)
    params["train"].update(generator={"epochs": 1, "epochs_decay": 0}, checkpoint_every=1, num_examples=1, device="cpu")
    params["tracking"]["system_metrics"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    serve_log = project / "serve.log"
    with serve_log.open("w") as handle:
        served = subprocess.Popen(
            [sys.executable, "flows/serve.py", "--params", str(project / "params.yaml")],
            cwd=ROOT,
            env=prefect_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        settings = dict(params)
        settings["train"] = {**params["train"], "loss": {**params["train"]["loss"], "l1": 42.0}}
        trigger = subprocess.run(
            [sys.executable, "-c", TRIGGER, json.dumps({"settings": settings})],
            env=prefect_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        served.terminate()
        served.wait(timeout=30)
    assert trigger.returncode == 0, f"{trigger.stderr[-3000:]}\n--- serve log ---\n{serve_log.read_text()[-3000:]}"
    report = json.loads(trigger.stdout.strip().splitlines()[-1])
    assert report["state"] == "COMPLETED", f"{report}\n--- serve log ---\n{serve_log.read_text()[-3000:]}"
    assert report["nightly_crons"] == ["0 2 * * *"]
    assert report["scheduled"] and all(run == ["SCHEDULED", "02:00"] for run in report["scheduled"])
    assert report["nightly_params"]["continue_from"] == "models:/nectargan-generator@latest"
    assert report["limits"] == [1, 1]
    assert report["sweep_state"] == "COMPLETED", report["sweep_message"]
    assert report["sweep_schema"] == ["base", "grid", "name", "project_dir", "register_best", "select_by"]
    assert report["sweep_limit"] == 1
    assert {"settings", "continue_from", "more_epochs", "project_dir"} <= set(report["settings_schema"])

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("nectargan").experiment_id])
    (run,) = [r for r in runs if "nectargan.sweep" not in r.data.tags]
    assert run.data.params["train.loss.l1"] == "42.0"
    (parent,) = [r for r in runs if r.data.tags.get("nectargan.sweep_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["train.loss.l1"] for c in children) == ["100.0", "50.0"]
    assert {c.data.params["train.loss.sobel"] for c in children} == {"3.0"}  # the flow's base, as --base
    assert (project / "outputs" / "sweeps" / "served" / "report.md").exists()
    assert run.data.tags["prefect_flow_run_id"]
    assert (project / "outputs" / "eval" / "metrics.json").exists()


ARTIFACT = """
import sys
from pathlib import Path
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from flows.pipeline import inline_images

@flow
def report():
    return create_markdown_artifact(inline_images(Path(sys.argv[1])), key="browser-check")

print(report())
"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a browser: apt-get install chromium (Debian)")
def test_a_report_artifact_shows_its_images_in_the_prefect_ui(prefect_env, tmp_path):
    """In a real browser: the markdown artifact's images are embedded, so the UI shows them."""
    Image.new("RGB", (64, 32), (200, 30, 30)).save(tmp_path / "curve.png")
    (tmp_path / "report.md").write_text("# Report\n\n![curves](curve.png)\n")
    made = subprocess.run(
        [sys.executable, "-c", ARTIFACT, str(tmp_path / "report.md")],
        cwd=ROOT,
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    artifact_id = made.stdout.strip().splitlines()[-1]
    page = prefect_env["PREFECT_API_URL"].removesuffix("/api") + f"/artifacts/artifact/{artifact_id}"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([*browser, f"--screenshot={tmp_path / 'ui.png'}", "--window-size=1200,900", page], timeout=120)
    assert '<img src="data:image/png;base64,' in dom or '<img alt="curves" src="data:image/png' in dom, dom[-3000:]
    assert (tmp_path / "ui.png").stat().st_size > 0


def test_prefect_yaml_declares_the_deployments_serve_serves(monkeypatch):
    """The work-pool path (prefect.yaml) and the one-machine path (flows/serve.py) offer the same deployments;
    only flows/serve.py freezes params.yaml into them and limits each to one run (its machine's GPU)."""
    monkeypatch.chdir(ROOT)  # Prefect writes entrypoints relative to the folder `python flows/serve.py` runs in
    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    served = {d.name: d for d in deployments(ROOT / "params.yaml")}
    assert declared.keys() == served.keys() == {"train", "nightly-continue", "sweep"}
    for name, deployment in served.items():
        spec = declared[name]
        assert spec["entrypoint"] == deployment.entrypoint, name
        assert (spec["description"], spec["tags"]) == (deployment.description, deployment.tags), name
        assert [s["cron"] for s in spec.get("schedules", [])] == [s.schedule.cron for s in deployment.schedules]
        frozen = {k: v for k, v in deployment.parameters.items() if k not in ("settings", "project_dir")}
        assert spec.get("parameters", {}) == frozen, name
    assert declared["nightly-continue"]["concurrency_limit"] == 1  # never two continues of one model at once


def test_every_flow_parameter_has_a_description_in_the_form(monkeypatch):
    """Prefect's run form shows a parameter's description (from the flow's docstring Args) under its field:
    as `prefect deploy` reads it from the entrypoint's source, and as flows/serve.py sends it."""
    monkeypatch.chdir(ROOT)  # the entrypoints are relative to the checkout
    schemas = {d.entrypoint: parameter_schema_from_entrypoint(d.entrypoint) for d in deployments(ROOT / "params.yaml")}
    schemas |= {flow.name: parameter_schema(flow) for flow in (pipeline, sweep_flow)}
    for name, schema in schemas.items():
        missing = [key for key, field in schema.properties.items() if not field.get("description")]
        assert schema.properties and not missing, f"{name}: no description for {missing}"
