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
    for path in PACKAGE.rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in {"prefect", "flows"} or m == "nectargan_core.cli"}
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
