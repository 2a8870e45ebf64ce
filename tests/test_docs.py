"""The docs: the settings reference is what the model generates, the site builds strictly, the README
stays short and points at the pages."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nectargan_core.settings_reference import settings_reference

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of params.yaml (an empty mapping, such as train.loss.schedules, is a leaf)."""
    keys = []
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            keys += _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_the_settings_page_is_what_the_model_generates():
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == settings_reference(), "docs/settings.md is stale: run `nectargan docs-settings`"


def test_the_settings_page_has_a_row_for_every_key_of_params_yaml():
    page = settings_reference()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]+ \| (`[^`]*`) \|", page, flags=re.MULTILINE))  # key: default
    keys = _leaf_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert len(keys) > 100
    assert not [key for key in keys if key not in rows]
    assert rows["train.loss.l1"] == "`100.0`" and rows["data.loader"] == '`"auto"`'


def test_the_docs_site_builds_strictly_with_the_settings_reference(tmp_path):
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "site" / "settings" / "index.html").read_text()
    assert "train.loss.l1" in html and "data.augment.joint.hflip.p" in html


def test_the_readme_is_short_and_links_to_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    pages = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))
    assert pages and not [page for page in pages if f"({page})" not in readme]


def _documented_commands() -> list[tuple[str, str]]:
    """(page, command) of every shell line in the README's and the docs' code blocks that starts with
    `make` or a tool of .venv/bin; continued lines joined, comments dropped. The team page's commands
    run against servers and are run by tests/test_team.py."""
    commands = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name == "team.md":
            continue
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                if line.startswith(("make ", ".venv/bin/")):
                    commands += [(page.name, part.strip()) for part in line.split("&&")]
    return commands


def test_every_documented_command_names_a_real_target_tool_and_options():
    """Checked as printed, without running: `make` targets exist, .venv/bin tools are installed, and
    every `nectargan` line parses with the real command-line parser (commands, options, choices)."""
    import shlex

    from nectargan_core.cli import build_parser

    commands = _documented_commands()
    assert len(commands) > 30
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for page, command in commands:
        words = shlex.split(command)
        if words[0] == "make":
            assert words[1] in targets, (page, command)
            continue
        tool = words[0].removeprefix(".venv/bin/")
        assert (BIN / tool).exists(), (page, command)
        if tool == "nectargan":
            try:
                build_parser(words[1]).parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{page}: `{command}` does not parse")
        elif tool == "python" and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), (page, command)
