"""The shape of the code: no import circle between sweeplab's modules, short functions.

Read from the source with `ast`, so imports inside functions (the lazy ones) count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sweeplab"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
MAX_FUNCTION_LINES = 80


def imported_sweeplab_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "sweeplab":  # from sweeplab import tracking, store
                found |= {a.name for a in node.names if a.name in MODULES}
            elif node.module.startswith("sweeplab."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sweeplab.")}
    return found - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path m -> ... -> m if the graph has one (depth-first, with the current path)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for dep in sorted(graph.get(module, ())):
            cycle = visit(dep, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_between_modules():
    graph = {m: imported_sweeplab_modules(PACKAGE / f"{m}.py") for m in MODULES}
    assert find_cycle(graph) is None


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_first_in_a_fresh_interpreter(module):
    """As `python -c "import sweeplab.<module>"`: a circle that only a lucky import order
    hides fails here."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import sweeplab.{module}"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", MODULES)
def test_no_function_is_longer_than_80_lines(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
