"""`nectargan sweep`: a grid (or named weightings) as MLflow child runs under one parent, with a report."""

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nectargan_core.cli import main
from nectargan_core.settings import SettingsError
from nectargan_core.studies.grid import grid, named_weightings, split_top_level
from nectargan_core.tracking.studies import PARENT_TAG
from nectargan_core.tracking.tracker import FINAL_STRIPS_NAME, VAL_CURVES_NAME

from .helpers import tiny_settings


def test_top_level_commas_make_the_grid():
    assert split_top_level("50,[1,4],'a,b',{x: 1, y: 2}") == ["50", "[1,4]", "'a,b'", "{x: 1, y: 2}"]
    points = grid(["train.loss.l1=50,100", "train.loss.sobel=0,10"])
    assert [p.name for p in points] == ["l1=50 sobel=0", "l1=50 sobel=10", "l1=100 sobel=0", "l1=100 sobel=10"]
    assert [p.name for p in grid(["train.loss.l1=50", "train.loss.sobel=0,10"])] == ["sobel=0", "sobel=10"]
    assert points[1].overrides == ("train.loss.l1=50", "train.loss.sobel=10")
    assert [p.overrides for p in grid(["data.augment.input.gamma.gamma_range=[0.8,1.2]"])] == [
        ("data.augment.input.gamma.gamma_range=[0.8,1.2]",)
    ]
    with pytest.raises(SettingsError, match=r"train\.loss\.l1: the list of values is empty"):
        grid(["train.loss.l1="])
    with pytest.raises(SettingsError, match=r"must look like key\.sub=value1,value2"):
        grid(["train.loss.l1"])


def test_named_weightings_from_a_file(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("sharp: {train.loss.l1: 50, train.loss.sobel: 10}\nplain: {train.loss.l1: 100}\n")
    assert [(c.name, c.overrides) for c in named_weightings(path)] == [
        ("sharp", ("train.loss.l1=50", "train.loss.sobel=10")),
        ("plain", ("train.loss.l1=100",)),
    ]
    path.write_text("- 1\n")
    with pytest.raises(SettingsError, match=r"w\.yaml"):
        named_weightings(path)


@pytest.fixture
def project(sample_root, tmp_path, monkeypatch):
    settings = tiny_settings(sample_root)  # 2 epochs, validation every epoch
    (tmp_path / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _client(project: Path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    return client, client.get_experiment_by_name("nectargan").experiment_id


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("train.loss.l3=1,2", "train.loss.l3"),  # no such key
        ("data.crop_size=32,64", "data.crop_size"),  # 64 fails validation (above load_size)
    ],
)
def test_a_bad_combination_is_refused_before_anything_trains(project, capsys, spec, needle):
    assert main(["sweep", "-s", spec]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (project / "outputs").exists() and not (project / "mlflow.db").exists()


def test_a_sweep_trains_children_under_a_parent_and_reports_them(project, sample_root, capsys):
    assert main(["sweep", "-s", "train.loss.l1=50,100", "--name", "study"]) == 0
    out = capsys.readouterr().out
    assert "| l1=50 | finished |" in out and "| l1=100 | finished |" in out
    client, experiment = _client(project)
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2 and {c.data.params["train.loss.l1"] for c in children} == {"50.0", "100.0"}
    assert parent.info.run_name == "study" and {c.info.run_name for c in children} == {"l1=50", "l1=100"}
    # MLflow's Compare page shows the top-level files the runs share (the same names in every run)
    top = [{a.path for a in client.list_artifacts(c.info.run_id) if not a.is_dir} for c in children]
    assert top[0] == top[1] and {FINAL_STRIPS_NAME, VAL_CURVES_NAME} <= top[0]
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "val/psnr")) >= 2
        assert child.data.params["train.output_dir"].startswith(os.path.join("outputs", "sweeps", "study", "runs"))
        (data,) = child.inputs.dataset_inputs  # the runs table's Dataset column
        assert data.dataset.name == sample_root.name
        assert json.loads(data.dataset.source) == {"uri": str(sample_root.resolve())}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {
        "sweep/report.md",
        "sweep/val_curves.png",
        "sweep/grid.png",
    }
    assert "![val_curves](val_curves.png)" in (project / "outputs/sweeps/study/report.md").read_text()
    assert parent.info.status == "FINISHED"
    assert not client.search_registered_models()  # children do not move the alias
    assert not (project / "outputs" / "train").exists()  # nothing trained into train.output_dir

    assert main(["sweep", "-s", "train.loss.l1=50,100", "--name", "study", "--register-best"]) == 0
    out = capsys.readouterr().out
    assert "| l1=50 | skipped |" in out and "| l1=100 | skipped |" in out  # finished before: not retrained
    assert len(client.search_runs([experiment])) == 3
    (version,) = client.search_model_versions("name='nectargan-generator'")
    best = client.get_run(version.run_id)
    assert best.data.tags[PARENT_TAG] == parent.info.run_id
    assert (
        client.get_run(parent.info.run_id).data.tags["best_child"].startswith(best.data.tags["nectargan.sweep_child"])
    )


def test_a_failing_child_is_marked_failed_and_the_sweep_goes_on(project, capsys):
    assert main(["sweep", "-s", "train.loss.l1=100,1e39", "--name", "wild"]) == 1
    out = capsys.readouterr().out
    assert "| l1=100 | finished |" in out and "| l1=1e39 | failed: " in out
    client, experiment = _client(project)
    statuses = sorted(r.info.status for r in client.search_runs([experiment]) if PARENT_TAG in r.data.tags)
    assert statuses == ["FAILED", "FINISHED"]


def test_compare_prints_a_sweeps_children_with_their_val_metrics(project, capsys):
    assert main(["sweep", "-s", "train.loss.l1=50,100", "--name", "study"]) == 0
    capsys.readouterr()
    assert main(["compare", "--sweep", "study"]) == 0
    out = capsys.readouterr().out
    assert "train.loss.l1" in out and "val/psnr" in out and out.count("| 50.0 |") + out.count("| 100.0 |") == 2
    assert "best val/psnr (epoch)" in out and "| l1=50 | finished |" in out  # the sweep's own table too


@pytest.mark.slow
def test_children_side_by_side_in_processes_of_their_own(project, capsys):
    assert main(["sweep", "-s", "train.loss.l1=50,100", "--name", "wide", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| l1=50 | finished |" in out and "| l1=100 | finished |" in out
    client, experiment = _client(project)
    children = [r for r in client.search_runs([experiment]) if PARENT_TAG in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert not client.search_registered_models()  # --no-register reached the child processes
