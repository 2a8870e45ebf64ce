"""The run and output layout: dvc.yaml names the same files as nectargan_core.layout, and every
command finds a run wherever train.output_dir puts it."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from nectargan_core.cli import main
from nectargan_core.files import atomic_path, remove_stale_temp_files
from nectargan_core.layout import (
    EvaluationPaths,
    RunPaths,
    ValidationPaths,
    checkpoint_epoch,
    checkpoint_name,
    onnx_path,
    parity_path,
    strip_key,
    strip_name,
)
from nectargan_core.settings import flatten_dotted, load_settings

from .helpers import tiny_settings

ROOT = Path(__file__).resolve().parents[1]


def test_names_parse_back():
    assert checkpoint_name(7) == "epoch_0007.pt" and checkpoint_epoch("epoch_0007.pt") == 7
    assert checkpoint_epoch("epoch_7.pt") is None and checkpoint_epoch("epoch_0007.pt.tmp") is None
    assert strip_name(12, 3) == "epoch_0012_sample_03.png" and strip_key("epoch_0012_sample_03.png") == (12, 3)
    assert strip_key("notes.txt") is None and strip_key("best_l1_01_x.png") is None


def _rendered_stages() -> dict[str, dict]:
    """dvc.yaml's stages with ``${key}`` replaced by the value of params.yaml, as DVC renders them."""
    flat = flatten_dotted(load_settings(ROOT / "params.yaml").model_dump(mode="json"))
    text = re.sub(r"\$\{([^}]+)\}", lambda m: str(flat[m[1]]), (ROOT / "dvc.yaml").read_text())
    return yaml.safe_load(text)["stages"]


def _paths(entries: list) -> set[str]:
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries}


def test_dvc_yaml_outputs_are_the_layout():
    stages = _rendered_stages()
    settings = load_settings(ROOT / "params.yaml")
    run = RunPaths.of(settings)
    validation = ValidationPaths(Path(settings.outputs.validation))
    evaluation = EvaluationPaths(Path(settings.outputs.eval))

    def outs(stage: str) -> set[str]:
        entries = [*stages[stage].get("outs", []), *stages[stage].get("metrics", []), *stages[stage].get("plots", [])]
        return _paths(entries)

    assert outs("prepare") == {str(settings.sample.out)}
    assert outs("validate") == {str(validation.csv), str(validation.json)}
    assert outs("train") == {str(p) for p in (run.latest, run.examples, run.loss_log, run.summary, run.epochs)}
    assert outs("examples") == {str(settings.outputs.examples)}
    assert outs("evaluate") == {str(evaluation.table), str(evaluation.metrics)}
    assert outs("export") == {str(onnx_path(settings)), str(parity_path(onnx_path(settings)))}
    assert str(validation.json) in _paths(stages["train"]["deps"])
    for stage in ("examples", "evaluate", "export"):
        assert str(run.latest) in _paths(stages[stage]["deps"]), stage


def test_stage_commands_take_their_paths_from_the_settings():
    """No stage command spells a path: moving an output folder is a params.yaml change."""
    for name, stage in _rendered_stages().items():
        assert "outputs/" not in stage["cmd"] and "--out" not in stage["cmd"], name


@pytest.fixture(scope="module")
def moved_run(sample_root, finished_project, tmp_path_factory):
    """A trained run in another folder than the one params.yaml names."""
    base = tmp_path_factory.mktemp("layout")
    moved = base / "elsewhere" / "run"
    shutil.copytree(finished_project / "outputs" / "train", moved, symlinks=True)
    params = base / "params.yaml"
    params.write_text(json.dumps(tiny_settings(sample_root).model_dump(mode="json")))
    return base, params, moved


def test_montage_and_loss_graphs_read_the_configured_output_dir(moved_run, monkeypatch, capsys):
    base, params, moved = moved_run
    monkeypatch.chdir(base)
    review = base / "review"
    common = ["--params", str(params), "-s", f"train.output_dir={moved}", "-s", f"outputs.review={review}"]
    assert main(["montage", *common]) == 0
    assert main(["loss-graphs", *common]) == 0
    assert f"montage: {review / 'montage.png'}" in capsys.readouterr().out
    assert sorted(p.name for p in review.iterdir()) == [
        "learning_rates.png",
        "loss_terms.png",
        "losses.png",
        "montage.png",
    ]
    assert not (base / "outputs" / "train").exists()  # nothing was read from (or written to) the default


def test_a_command_without_the_run_names_the_configured_folder(moved_run, monkeypatch, capsys):
    base, params, _ = moved_run
    monkeypatch.chdir(base)
    assert main(["montage", "--params", str(params), "-s", f"train.output_dir={base / 'nowhere'}"]) == 2
    assert str(base / "nowhere" / "examples") in capsys.readouterr().err


def test_a_killed_writes_temp_file_is_found_by_its_target_and_nothing_else(tmp_path):
    """The temp file names atomic_path makes are the ones the clean-ups of a killed run remove."""
    kept = [tmp_path / name for name in (".hidden", "a.tmp", "run.png", ".b.jpg.x1.tmp")]
    for path in kept:
        path.write_text("kept")
    with atomic_path(tmp_path / "out.png") as temp:  # as a kill mid-write leaves it
        temp.write_text("half")
        assert remove_stale_temp_files(tmp_path, ".png") == [temp]
        temp.write_text("half")
    assert (tmp_path / "out.png").read_text() == "half"
    assert sorted(p.name for p in remove_stale_temp_files(tmp_path)) == [".b.jpg.x1.tmp"]
    assert all(path.exists() for path in kept[:3])
