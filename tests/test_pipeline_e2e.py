"""`dvc repro` of the whole pipeline in a temporary git repo holding this project, with tiny settings.

Every stage command runs under an import recorder, so the test knows which project modules each
stage really loads and checks that dvc.yaml makes the stage depend on all of them.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from .team_stack import documented, s3_objects

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# Imported by every Python process started with the recorder folder on PYTHONPATH: at exit it writes
# the project modules the process loaded, with its command line.
RECORDER = """
import atexit, json, os, sys

def _record():
    loaded = sorted({m.__file__ for n, m in list(sys.modules.items())
                     if n.split(".")[0] == "nectargan_core" and getattr(m, "__file__", None)})
    if loaded:
        path = os.path.join(os.environ["NECTARGAN_IMPORT_LOG"], f"{os.getpid()}.json")
        with open(path, "w") as handle:
            json.dump({"argv": sys.argv, "modules": loaded}, handle)

atexit.register(_record)
"""
TINY = {
    "sample": {"size": 32, "train": 6, "val": 2, "test": 2},
    "data": {"load_size": 36, "crop_size": 32, "batch_size": 2},
    "model": {
        "generator": {"features": 8, "n_downs": 1, "dropout_blocks": 2},
        "discriminator": {"features": 8},
    },
    "train": {
        "generator": {"epochs": 2, "epochs_decay": 0},
        "discriminator": {"epochs": 2, "epochs_decay": 0},
        "checkpoint_every": 1,
        "num_examples": 2,
        "device": "cpu",
    },
    "tracking": {"system_metrics": False},
}


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **(extra_env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This project's tracked files (as in the working tree) in a fresh git repo, with tiny params."""
    repo = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        run(cmd, repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"], repo)
    return repo


def assert_bounded_disk(project: Path) -> None:
    """At most 3 weight files (hard links once) of at least half the largest checkpoint's size, together at
    most 6 times its size, in the project folder outside .venv, .git and data/. (At these tiny sizes the
    databases and images outweigh the weights, so only weight files count here; docs/performance.md measures all.)"""
    files, seen = [], set()
    for path in project.rglob("*"):
        parts = path.relative_to(project).parts
        if parts[0] in (".venv", ".git", "data") or path.suffix not in (".pt", ".onnx") or path.is_symlink():
            continue
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            files.append((stat.st_size, path))
    largest = max(size for size, path in files if path.suffix == ".pt")
    big = [(size, path) for size, path in files if size >= largest / 2]
    assert len(big) <= 3, big
    assert sum(size for size, _ in big) <= 6 * largest


def recorder_env(folder: Path) -> dict[str, str]:
    (folder / "hook").mkdir(parents=True)
    (folder / "log").mkdir()
    (folder / "hook" / "sitecustomize.py").write_text(RECORDER)
    path = os.pathsep.join(filter(None, (str(folder / "hook"), os.environ.get("PYTHONPATH"))))  # keeps a checkout first
    return {"PYTHONPATH": path, "NECTARGAN_IMPORT_LOG": str(folder / "log")}


def loaded_modules(log: Path) -> dict[str, set[str]]:
    """Project modules (as ``nectargan_core/...`` paths) loaded per `nectargan SUBCOMMAND` process.

    The console script runs the installed (editable) package, so the files are named from the
    package folder on: the copies in the test repo are the same files.
    """
    by_command: dict[str, set[str]] = {}
    for record in map(json.loads, (p.read_text() for p in log.glob("*.json"))):
        argv = record["argv"]
        if Path(argv[0]).name == "nectargan":
            parts = [Path(m).parts for m in record["modules"]]
            modules = {"/".join(p[p.index("nectargan_core") :]) for p in parts}
            by_command.setdefault(argv[1], set()).update(modules)
    return by_command


def test_dvc_repro_runs_the_pipeline_and_tracks_it(project, tmp_path):
    out = run(["dvc", "repro"], project, recorder_env(tmp_path))
    assert stages_run(out) == ["prepare", "validate", "train", "examples", "evaluate", "export"]

    # Every module a stage's command loaded is covered by one of the stage's deps (a file or a folder).
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    loaded = loaded_modules(tmp_path / "log")
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        deps = [d for d in stage["deps"] if not d.startswith("$")]
        assert loaded.get(command), f"stage {name}: no import record of `{stage['cmd']}`"
        uncovered = [m for m in sorted(loaded[command]) if not any(m == d or m.startswith(d + "/") for d in deps)]
        assert not uncovered, f"stage {name} loads {uncovered} but does not depend on them in dvc.yaml"

    assert len(list((project / "data" / "sample" / "train").glob("*.png"))) == 6
    assert json.loads((project / "outputs" / "validation" / "validation.json").read_text())["ok"] is True
    assert sorted(p.name for p in (project / "outputs" / "train" / "checkpoints").iterdir()) == [
        ".gitignore",
        "latest.pt",
    ]
    assert sorted(p.name for p in (project / "outputs" / "train" / "snapshots").iterdir()) == [
        "epoch_0001.pt",
        "epoch_0002.pt",
    ]
    assert len(list((project / "outputs" / "examples").glob("*.png"))) == 2
    metrics = json.loads((project / "outputs" / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 2

    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert '"ssim"' in shown and '"psnr"' in shown
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert "loss_g" in plots and "loss_d" in plots
    pushed = run(["dvc", "push"], project)
    assert "pushed" in pushed and any((project / "dvc-storage").rglob("*"))

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    (run_info,) = client.search_runs([client.get_experiment_by_name("nectargan").experiment_id])
    assert run_info.data.params["train.loss.l1"] == "100.0"
    assert [m.step for m in client.get_metric_history(run_info.info.run_id, "loss/g")] == [1, 2]
    assert "eval/ssim" in run_info.data.metrics
    assert json.loads((project / "outputs" / "export" / "generator.parity.json").read_text())["max_abs_diff"]
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
    assert {"images", "examples", "evaluation", "onnx"} <= artifacts
    assert not {"snapshots", "checkpoints"} & artifacts  # log_checkpoints: final: the model holds the full state
    assert_bounded_disk(project)
    version = client.get_model_version_by_alias("nectargan-generator", "current")
    assert version.run_id == run_info.info.run_id and version.tags["epoch"] == "2"

    again = run(["dvc", "repro"], project)
    assert stages_run(again) == [] and "Data and pipelines are up to date" in again

    # A change to the settings model makes every stage stale; one to the Sobel loss, the ones that use it;
    # one to the training step, train only; one to the comparison or the review plots (code or command), none.
    for modules, stale in (
        (["nectargan_core/settings.py"], set(stages)),
        (["nectargan_core/losses/pixel.py"], {"train", "evaluate"}),
        (["nectargan_core/training/step.py"], {"train"}),
        (
            ["nectargan_core/tracking/compare.py", "nectargan_core/reports/review.py", "nectargan_core/cli/runs.py"],
            set(),
        ),
    ):
        originals = {module: (project / module).read_text() for module in modules}
        for module, original in originals.items():
            (project / module).write_text(original + "# a comment\n")
        status = json.loads(run(["dvc", "status", "--json"], project))
        for module, original in originals.items():
            (project / module).write_text(original)
        assert set(status) == stale, modules


def test_dvc_exp_run_compares_loss_weightings(project):
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    out = run(["dvc", "exp", "run", "-S", "train.loss.l1=25", "-n", "l1-25"], project)
    assert stages_run(out) == ["train", "examples", "evaluate", "export"]  # a changed param: not prepare, validate
    table = json.loads(run(["dvc", "exp", "show", "--json"], project))
    names = json.dumps(table)
    assert "l1-25" in names and "ssim" in names

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("nectargan").experiment_id], order_by=["attributes.start_time DESC"]
    )
    newest, previous = runs[0], runs[1]
    assert newest.data.tags.get("dvc_experiment") == "l1-25"
    differing = {k for k in newest.data.params if newest.data.params[k] != previous.data.params.get(k)}
    assert differing == {"train.loss.l1"}
    assert (newest.data.params["train.loss.l1"], previous.data.params["train.loss.l1"]) == ("25.0", "100.0")
    version = client.get_model_version_by_alias("nectargan-generator", "current")
    assert (str(version.version), version.run_id) == ("2", newest.info.run_id)

    # Where the bytes are, and the clean-up path: forget a run (+ mlflow gc), drop experiments (+ dvc gc).
    report = run(["nectargan", "disk"], project)
    assert "DVC cache" in report and "total, hard links once" in report and runs[-1].info.run_id in report
    first = runs[-1].info.run_id
    models = client.search_logged_models(experiment_ids=[runs[-1].info.experiment_id])
    model_dirs = [project / "mlruns" / "models" / m.model_id for m in models if m.source_run_id == first]
    assert (project / "mlruns" / first).is_dir() and model_dirs and all(d.is_dir() for d in model_dirs)
    forgot = run(["nectargan", "forget", "--runs", first], project)
    assert "deleted registered nectargan-generator version 1" in forgot and "mlflow gc" in forgot
    run(["mlflow", "gc", "--backend-store-uri", uri, "--tracking-uri", uri], project)
    left = [p for d in (project / "mlruns" / first, *model_dirs) for p in d.rglob("*") if p.is_file()]
    assert not left, left  # gc removes the files (and leaves the empty folders)

    def cache_bytes() -> int:
        return sum(p.stat().st_size for p in (project / ".dvc" / "cache").rglob("*") if p.is_file())

    before = cache_bytes()
    run(["dvc", "exp", "remove", "--all-commits"], project)
    run(["dvc", "gc", "--workspace", "--force"], project)
    assert cache_bytes() < before
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project)


def test_queued_experiments_log_into_the_projects_store(project):
    """`dvc exp run --queue` trains in temporary copies of the repo; the default SQLite store is the project's."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("nectargan").experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment])}
    for value in ("10", "20"):
        run(["dvc", "exp", "run", "--queue", "-S", f"train.loss.l1={value}", "-n", f"q-{value}"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], project)
        rows = [line for line in status.splitlines() if "q-10" in line or "q-20" in line]
        if len(rows) == 2 and all("Success" in line or "Failed" in line for line in rows):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert all("Success" in line for line in rows), status
    new = [r for r in client.search_runs([experiment]) if r.info.run_id not in before]
    assert sorted(r.data.params["train.loss.l1"] for r in new) == ["10.0", "20.0"]
    assert {r.data.tags.get("dvc_experiment") for r in new} == {"q-10", "q-20"}
    assert all(r.info.status == "FINISHED" for r in new)
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing logged into a temporary copy


def test_team_s3_remote_push_then_a_fresh_clone_pulls_and_has_nothing_to_reproduce(project, team_s3_server, tmp_path):
    """The Team setup DVC commands (docs/team.md) against an S3 API server; credentials only in the environment."""
    team = team_s3_server
    run(["dvc", "repro"], project)  # nothing to do after the tests above; the whole pipeline when run alone
    for prefix in ("dvc remote add", "dvc remote modify"):
        run(documented(prefix, team.values), project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "team remote"], project)
    assert not any(secret in (project / ".dvc" / "config").read_text() for secret in team.secrets)
    pushed = run(documented("dvc push", team.values), project, team.s3_env)
    assert "pushed" in pushed
    stored = s3_objects(team, team.values["DVC_BUCKET"])
    checkpoint = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["outs"][0]["md5"]
    assert any(key.endswith(checkpoint[2:]) for key in stored)  # the checkpoint is in the bucket

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    pulled = run(documented("dvc pull", team.values), clone, team.s3_env)
    assert (clone / "outputs" / "train" / "checkpoints" / "latest.pt").is_file(), pulled
    again = run(["dvc", "repro"], clone, team.s3_env)
    assert stages_run(again) == [] and "Data and pipelines are up to date" in again
