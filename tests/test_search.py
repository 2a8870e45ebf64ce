"""`nectargan search`: an Optuna study over settings, each trial an MLflow child run under one parent."""

import json
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from nectargan_core.cli import main
from nectargan_core.settings import load_settings
from nectargan_core.studies import search as search_module
from nectargan_core.studies.space import Axis, parse_space
from nectargan_core.tracking.studies import PARENT_TAG, PRUNED_TAG, SWEEP_TAG, TRIAL_TAG

from .helpers import tiny_settings


def _project(folder: Path, sample_root: Path) -> Path:
    settings = tiny_settings(sample_root, **{"generator.epochs": 3})  # validation every epoch
    (folder / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    return folder


@pytest.fixture(scope="module")
def project(sample_root, tmp_path_factory):
    """One project (and MLflow store, whose creation costs seconds) for the searches: a study each."""
    with pytest.MonkeyPatch.context() as patch:
        folder = _project(tmp_path_factory.mktemp("search"), sample_root)
        patch.chdir(folder)
        yield folder


@pytest.fixture
def empty_project(sample_root, tmp_path, monkeypatch):
    monkeypatch.chdir(_project(tmp_path, sample_root))
    return tmp_path


def _client(project: Path) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def _runs(client: MlflowClient, study: str) -> tuple[Run, list[Run]]:
    """The study's parent run and its children."""
    experiment = client.get_experiment_by_name("nectargan").experiment_id
    runs = client.search_runs([experiment], f"tags.`{SWEEP_TAG}` = '{study}'")
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    return parent, [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]


def _study(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'optuna.db'}")


def test_the_three_kinds_of_axis():
    base = load_settings(Path(__file__).resolve().parents[1] / "params.yaml")
    axes = parse_space(["train.loss.l1=10:200:log", "train.loss.sobel=0:20", "train.loss.vgg=0,1,5"], None, base)
    assert axes == [
        Axis("train.loss.l1", 10.0, 200.0, log=True),
        Axis("train.loss.sobel", 0.0, 20.0),
        Axis("train.loss.vgg", choices=(0, 1, 5)),
    ]
    assert parse_space(["seed=0:9"], None, base) == [Axis("seed", 0, 9, integer=True)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-s", "train.loss.l3=1:2"], "train.loss.l3: no such setting"),
        (["-s", "train.loss=1:2"], "train.loss: a group of settings"),
        (["-s", "train.loss.l1=5:5"], "train.loss.l1: the range '5:5' is empty or inverted"),
        (["-s", "train.loss.l1=50:10"], "train.loss.l1: the range '50:10' is empty or inverted"),
        (["-s", "train.loss.l1=0:10:log"], "train.loss.l1: the log range '0:10:log' needs low > 0"),
        (["-s", "train.loss.l1=-1:10"], "train.loss.l1: -1.0 is refused by the settings"),
        (["-s", "data.crop_size=32,4096"], "data.crop_size: 4096 is refused by the settings"),
        (["-s", "seed=0.5:3"], "seed: an int setting takes an int range"),
        (["-s", "train.device=0:1"], "train.device: not a number setting"),
        (["-s", "train.loss.l1=10:200", "--sampler", "grid"], "--sampler grid: train.loss.l1 is a range"),
        (["--file", "space.yaml"], "train.loss.vgg: -5 is refused by the settings"),
    ],
)
def test_a_bad_space_is_refused_before_anything_starts(empty_project, capsys, args, needle):
    project = empty_project
    (project / "space.yaml").write_text("train.loss.l1: 10:200:log\ntrain.loss.vgg: [0, -5]\n")
    assert main(["search", *args]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert needle in line and "Traceback" not in err
    assert not {"outputs", "mlflow.db", "optuna.db"} & {p.name for p in project.iterdir()}


def test_a_search_trains_its_trials_under_a_parent_and_reports_them(project, capsys):
    args = ["search", "-s", "train.loss.l1=10:200:log", "-s", "train.loss.sobel=0,5", "--trials", "3"]
    args += ["--base", "train.generator.epochs=2"]
    assert main([*args, "--pruner", "halving", "--seed", "0", "--study", "loss"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | train.loss.l1=" in out and "best by val/psnr: trial " in out
    client = _client(project)
    parent, children = _runs(client, "loss")
    assert sorted(c.data.tags[TRIAL_TAG] for c in children) == ["0", "1", "2"]
    assert parent.info.run_name == "loss"
    for child in children:  # trial-N and its values, floats short: trial-0 l1=87.2 sobel=5
        l1, sobel = (child.data.params[f"train.loss.{key}"] for key in ("l1", "sobel"))
        expected = f"trial-{child.data.tags[TRIAL_TAG]} l1={float(f'{float(l1):.3g}'):g} sobel={float(sobel):g}"
        assert child.info.run_name == expected
    assert {c.info.status for c in children} == {"FINISHED"} and parent.info.status == "FINISHED"
    folders = {c.data.params["train.output_dir"] for c in children}
    assert folders == {str(Path("outputs/sweeps/loss/runs") / f"trial-{n}") for n in range(3)}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/report.md", "sweep/history.png"} <= logged
    report = (project / "outputs" / "sweeps" / "loss" / "report.md").read_text()
    assert "| trial | params | value | state | pruned at epoch |" in report and "![history](history.png)" in report
    assert ("importance.png" in report) == ("sweep/importance.png" in logged)
    assert len(_study(project, "loss").trials) == 3
    assert not any(client.search_model_versions(f"run_id='{c.info.run_id}'") for c in children)  # no alias moved


def test_a_pruned_trial_stops_at_an_epoch_and_its_run_finishes(project, capsys, monkeypatch):
    # A pruner that prunes every trial at its first report (val/psnr is never above 1e9).
    monkeypatch.setattr(
        search_module, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(upper=None, lower=1e9)
    )
    assert main(["search", "-s", "train.loss.l1=10:200", "--trials", "1", "--study", "cut"]) == 0
    client = _client(project)
    _, (child,) = _runs(client, "cut")
    assert child.info.status == "FINISHED" and child.data.tags[PRUNED_TAG] == "1"
    assert len(client.get_metric_history(child.info.run_id, "val/psnr")) == 1  # nothing trained after epoch 1
    (trial,) = _study(project, "cut").trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 1
    summary = json.loads((project / "outputs/sweeps/cut/runs/trial-0/summary.json").read_text())
    assert summary["last_epoch"] == 1 and "pruned after epoch 1" in summary["stopped_early"]
    assert "| 0 | train.loss.l1=" in capsys.readouterr().out


def test_a_rerun_continues_the_study(project, capsys):
    args = ["search", "-s", "train.loss.l1=10:200", "--trials", "1", "--study", "more", "--pruner", "none"]
    args += ["--base", "train.generator.epochs=1", "--seed", "3"]
    assert main(args) == 0
    assert main([*args, "--register-best"]) == 0
    trials = _study(project, "more").trials
    assert [t.number for t in trials] == [0, 1] and trials[0].params != trials[1].params  # reseeded past trial 0
    client = _client(project)
    _, children = _runs(client, "more")  # one parent, reopened
    assert sorted(r.data.tags[TRIAL_TAG] for r in children) == ["0", "1"]
    (version,) = client.search_model_versions("name='nectargan-generator'")
    best = max(trials, key=lambda t: t.value)
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    assert "Parameter importance" not in (project / "outputs/sweeps/more/report.md").read_text()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_a_killed_process_left_running_is_failed_and_retried(project, capsys, monkeypatch):
    monkeypatch.setattr(search_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(search_module, "GRACE_S", 1)
    axes = parse_space(["train.loss.l1=10:200"], None, load_settings("params.yaml"))
    storage = search_module.default_storage(project)
    study = search_module.open_study(storage, "killed", "random", 0, "none", "val/psnr", axes)
    orphan = study.ask()  # as a process killed while it trained: RUNNING, its heartbeats stopped
    axes[0].suggest(orphan)
    study._storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.1)  # SQLite keeps heartbeats to the second: 2 s apart is past a 1 s grace
    args = ["search", "-s", "train.loss.l1=10:200", "--trials", "1", "--study", "killed", "--pruner", "none"]
    assert main([*args, "--base", "train.generator.epochs=1"]) == 0
    first, retried = _study(project, "killed").trials
    assert first.state == optuna.trial.TrialState.FAIL and retried.state == optuna.trial.TrialState.COMPLETE
    assert retried.params == first.params


def test_a_failing_trial_is_marked_failed(project, capsys):
    args = ["search", "-s", "train.loss.l1=1e39,2e39", "--sampler", "grid", "--trials", "1", "--study", "wild"]
    assert main([*args, "--base", "train.generator.epochs=1"]) == 1
    assert "| 0 | train.loss.l1=" in capsys.readouterr().out
    (trial,) = _study(project, "wild").trials
    assert trial.state == optuna.trial.TrialState.FAIL and "train.loss.l1" in trial.user_attrs["error"]
    parent, (child,) = _runs(_client(project), "wild")
    assert parent.info.status == child.info.status == "FAILED"  # every trial failed: the parent too
    assert "failed: " in (project / "outputs/sweeps/wild/report.md").read_text()
