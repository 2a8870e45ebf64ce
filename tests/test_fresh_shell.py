"""The commands a user is shown work as printed from a fresh shell, without an activated venv.

`make install` puts venv-bin.pth into the venv: every Python started from its bin folder puts
that folder first on PATH, so dvc's stages find `nectargan` and mlflow finds `uvicorn`.
"""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv the tests run in, as `make install` set it up


def fresh_shell_env() -> dict[str, str]:
    """This environment as a new login shell has it: no venv on PATH, none activated, and (as in
    CI) no SHELL, so dvc runs its stages with /bin/sh."""
    env = {k: v for k, v in os.environ.items() if k not in ("SHELL", "VIRTUAL_ENV")}
    return {**env, "PATH": "/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}


def test_venv_dvc_runs_a_nectargan_stage_without_an_activated_venv(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    stage = "command -v nectargan > where.txt && nectargan --help > help.txt"
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  probe:\n    cmd: {stage}\n")
    result = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=tmp_path, env=fresh_shell_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "where.txt").read_text().strip() == str(BIN / "nectargan")
    assert "stage train:" in (tmp_path / "help.txt").read_text()


def test_venv_mlflow_finds_uvicorn_without_an_activated_venv():
    """`mlflow models serve --env-manager local` runs `bash -c "exec uvicorn ..."` with its own environment."""
    probe = "import subprocess; subprocess.run(['bash', '-c', 'exec uvicorn --version'], check=True)"
    result = subprocess.run([str(BIN / "python"), "-c", probe], env=fresh_shell_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Running uvicorn")
