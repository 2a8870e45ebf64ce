"""The import graph of the library: one direction, no cycles, nothing from orchestration or the CLI."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nectargan_core"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def test_the_core_never_imports_prefect_flows_or_the_cli():
    for path in (p for p in PACKAGE.rglob("*.py") if PACKAGE / "cli" not in p.parents):  # the CLI is the top floor
        imported = {tuple(m.split(".")) for m in _imports(path)}
        bad = {".".join(m) for m in imported if m[0] in {"prefect", "flows"} or m[:2] == ("nectargan_core", "cli")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_core_has_no_import_cycles():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            assert state.get(child) != "open", f"import cycle: {' -> '.join([*trail, node, child])}"
            if child not in state:
                visit(child, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def _core_sources(outside: str) -> dict[Path, str]:
    """The text of every library module outside ``outside`` (a subpackage or module name)."""
    return {
        path: path.read_text()
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in (outside, f"{outside}.py")
    }


def test_only_the_cli_names_the_cli_module():
    """The core never runs the CLI by module name: a training in other processes runs nectargan_core.launch."""
    named = [path for path, text in _core_sources("cli").items() if "nectargan_core.cli" in text]
    assert not named, f"{[str(p.relative_to(ROOT)) for p in named]} name nectargan_core.cli"


def test_torchrun_variables_are_read_in_one_module():
    readers = {
        path.name
        for path, text in _core_sources("cli").items()
        if any(f'"{name}"' in text for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    }
    assert readers == {"distributed.py"}


def test_only_tracking_talks_to_the_mlflow_client():
    """Which run, its tags and filter strings, registration: tracking/ owns the run lifecycle."""
    calls = ("search_runs", "MlflowClient(", ".client.", "set_terminated")
    sources = {**_core_sources("tracking"), **{p: p.read_text() for p in (ROOT / "flows").rglob("*.py")}}
    leaks = {str(p.relative_to(ROOT)): [c for c in calls if c in text] for p, text in sources.items()}
    assert not {path: found for path, found in leaks.items() if found}
