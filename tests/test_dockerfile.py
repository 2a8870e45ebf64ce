"""Docker cannot run on these machines; check instead that the image installs and runs the way the
project's own commands do."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(maxsplit=1)[0], line.split(maxsplit=1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def test_image_installs_and_runs_through_the_makefile():
    steps = _instructions()
    runs = [arg for op, arg in steps if op == "RUN"]
    assert "make install" in runs
    (cmd,) = [arg for op, arg in steps if op == "CMD"]
    assert cmd == '["make", "flow"]'
    targets = _make_targets()
    assert {"install", "flow", "run", "test"} <= targets
    makefile = (ROOT / "Makefile").read_text()
    # install, run, test and flow share one install recipe: the stamp that pip-installs '.[dev]'.
    assert re.search(r"^install: \$\(STAMP\)$", makefile, re.MULTILINE)
    assert re.search(r"^flow: \$\(STAMP\)$", makefile, re.MULTILINE)
    assert re.search(r"^run: \$\(STAMP\)$", makefile, re.MULTILINE)
    assert "pip install --quiet --disable-pip-version-check -e '.[dev]'" in makefile
    flow_recipe = makefile.split("\nflow: $(STAMP)\n", 1)[1].split("\n\n", 1)[0]
    assert "python -m flows" in flow_recipe and (ROOT / "flows" / "__main__.py").exists()


def test_image_runs_as_a_non_root_user_on_a_python_311_base():
    steps = _instructions()
    args = dict((op, arg) for op, arg in steps if op in ("ARG", "USER"))
    assert args["ARG"] == "BASE=python:3.11-slim"
    assert args["USER"] not in ("root", "0")
    ops = [op for op, _ in steps]
    assert ops.index("USER") < ops.index("COPY") < ops.index("CMD")


def test_readme_commands_are_the_makefile_targets():
    for page in ("README.md", "docs/getting-started.md"):  # the two commands, on both
        readme = (ROOT / page).read_text()
        assert "make run" in readme and "make test" in readme, page
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
