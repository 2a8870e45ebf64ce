import subprocess
import sys
from pathlib import Path

from nectargan_core.cli import FAMILIES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_settings_lists_every_key_with_its_description(capsys):
    assert main(["settings", "--params", str(ROOT / "params.yaml"), "-s", "train.loss.l1=42"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("train.loss.l1 "))
    assert "42.0" in line and "Weight of mean |G(x) - y|" in line
    assert "data.augment.input.compression.quality_range" in out


def test_outputs_prints_an_mlflow_ui_command_that_runs_without_an_activated_venv(capsys):
    assert main(["outputs", "--params", str(ROOT / "params.yaml")]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("MLflow UI"))
    command = line.removeprefix("MLflow UI").split()
    assert command[1:3] == ["ui", "--backend-store-uri"] and command[3].startswith("sqlite:///")
    assert Path(command[0]).resolve() == (Path(sys.executable).parent / "mlflow").resolve()


def test_bad_settings_exit_2_with_every_problem(capsys):
    code = main(["settings", "--params", str(ROOT / "params.yaml"), "-s", "train.loss.l11=1", "-s", "seed=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'train.loss.l1'" in err and "seed:" in err


def test_sample_data_command(tmp_path, capsys):
    args = ["-s", f"sample.out={tmp_path / 'd'}", "-s", "sample.size=32", "-s", "sample.train=5", "-s", "sample.seed=1"]
    assert main(["sample-data", "--params", str(ROOT / "params.yaml"), *args]) == 0
    assert "5 train, 16 val, 16 test" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "train").glob("*.png"))) == 5


def test_console_script_prints_model_sizes():
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "nectargan"),  # the installed console script
            "models",
            "-s",
            "model.generator.features=64",
            "-s",
            "model.generator.n_downs=6",
            "-s",
            "model.discriminator.features=64",
            "-s",
            "data.load_size=286",
            "-s",
            "data.crop_size=256",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "54,404,675" in result.stdout and "2,766,913" in result.stdout


def _commands(parser) -> list[str]:
    (sub,) = (action for action in parser._actions if action.dest == "command")
    return list(sub.choices)


def test_each_family_module_adds_exactly_its_commands_and_help_lists_all():
    for commands in FAMILIES.values():
        assert _commands(build_parser(commands[0])) == list(commands)
    everything = build_parser()
    assert _commands(everything) == [c for commands in FAMILIES.values() for c in commands]
    shown = everything.format_help()
    assert "stage train: train (or continue)" in shown and "leaderboard of MLflow runs" in shown


def test_a_command_loads_only_its_own_family_of_the_cli():
    """So a DVC stage depends on one file of the CLI: `nectargan compare`'s help text does not retrain."""
    probe = "import sys; from nectargan_core.cli import build_parser; build_parser('train'); print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    ours = {m for m in loaded if m.startswith("nectargan_core.")}
    assert "nectargan_core.cli.pipeline" in ours
    assert not ours & {f"nectargan_core.cli.{family}" for family in FAMILIES if family != "pipeline"}
    assert not any(m.startswith(("nectargan_core.tracking", "nectargan_core.reports")) for m in ours), ours
