"""The shape of the code: subpackages whose imports run one way, no import circle, short
functions.

    errors <- config <- train <- track <- sweep <- job <- cli

A module may import from its own subpackage and from those to its left, never from one to its
right: the training core knows nothing of MLflow, tracking nothing of sweeps. Read from the
source with `ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sweeplab"
LAYERS = ["errors", "config", "train", "track", "sweep", "job", "cli"]
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
    if p != PACKAGE / "__init__.py"
)
PLUGINS = sorted((SRC / "hydra_plugins").rglob("*.py"))
MAX_FUNCTION_LINES = 60


def source(module: str) -> Path:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    return path if path.exists() else PACKAGE / module.replace(".", "/") / "__init__.py"


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_sweeplab_modules(path: Path) -> set[str]:
    """The sweeplab modules `path` imports when it runs, as `train.loop`, `job`, `errors`."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "sweeplab" or node.module.startswith("sweeplab."):
                base = node.module.removeprefix("sweeplab").removeprefix(".")
                for alias in node.names:  # `from sweeplab.track import store`: a module
                    name = f"{base}.{alias.name}".lstrip(".")
                    found.add(name if name in MODULES else base)
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("sweeplab.")
                for a in node.names
                if a.name.startswith("sweeplab.")
            }
    return found - {""}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_module_is_in_a_layer():
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)


@pytest.mark.parametrize("module", MODULES)
def test_imports_run_one_way(module):
    wrong = [dep for dep in imported_sweeplab_modules(source(module)) if layer(dep) > layer(module)]
    assert wrong == [], f"{module} ({LAYERS[layer(module)]}) imports from a later layer: {wrong}"


def test_the_rule_catches_a_core_module_importing_mlflow_code(tmp_path):
    """The check itself: a train/ module that imports the tracking layer is caught."""
    bad = tmp_path / "loop.py"
    bad.write_text("from sweeplab.track.tracking import Run\nfrom sweeplab.errors import E\n")
    deps = imported_sweeplab_modules(bad)
    assert deps == {"track.tracking", "errors"}
    assert [d for d in deps if layer(d) > layer("train.loop")] == ["track.tracking"]


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_the_hydra_plugins_reach_no_further_than_the_sweep_layer(plugin):
    deps = imported_sweeplab_modules(plugin)
    assert [d for d in deps if layer(d) > layer("sweep")] == []


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
    graph = {m: imported_sweeplab_modules(source(m)) - {m} for m in MODULES}
    assert find_cycle(graph) is None


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_first_in_a_fresh_interpreter(module):
    """As `python -c "import sweeplab.<module>"`: a circle that only a lucky import order
    hides fails here."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import sweeplab.{module}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", MODULES)
def test_no_function_is_longer_than_60_lines(module):
    tree = ast.parse(source(module).read_text())
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


# --- sizes, imports at the top, no patched libraries ---------------------------------------

ALL_SOURCES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 300
# The only imports inside functions, each for start-up time: Hydra imports every plugin module
# at start-up (also for --help), --help / --cfg job need no torch, MLflow or Optuna, and bad
# input is refused before they load.
LAZY_IMPORTS = {
    ("hydra_plugins/sweeplab_sweepers/optuna_sweeper.py", "__init__"),
    ("hydra_plugins/sweeplab_sweepers/basic_sweeper.py", "setup"),
    ("train.py", "main"),
    ("sweeplab/sweep/callback.py", "_valid"),  # Hydra's callback: after validation
}
# torch's documented global switches, set by assignment (torch.backends.cudnn.benchmark = ...)
SWITCHES = ("torch.backends.",)


def function_level_imports(path: Path) -> list[tuple[str, str]]:
    """(function name, import statement) of every import inside a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    found.append((node.name, ast.unparse(inner)))
    return found


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_longer_than_300_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_are_at_the_top_but_for_the_start_up_seams(path):
    where = str(path.relative_to(SRC))
    lazy = [(f, imp) for f, imp in function_level_imports(path) if (where, f) not in LAZY_IMPORTS]
    assert lazy == []


def test_the_start_up_seams_are_few_and_each_plugin_has_one():
    every = [imp for p in ALL_SOURCES for imp in function_level_imports(p)]
    assert 0 < len(every) <= 10, every
    for plugin in PLUGINS:
        assert len(function_level_imports(plugin)) <= 1, plugin.name


def _library_names(tree: ast.AST) -> set[str]:
    """Names bound to torch / MLflow or anything imported from them."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.split(".")[0] in ("torch", "mlflow")
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            "torch",
            "mlflow",
        ):
            names |= {a.asname or a.name for a in node.names}
    return names


def _root(expr) -> str | None:
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def patched_library_names(path: Path) -> list[str]:
    """Assignments to an attribute of torch / MLflow (or of anything imported from them),
    setattr on one, and any use of unittest.mock, in `path`: production code patches no
    library."""
    tree = ast.parse(path.read_text())
    libraries = _library_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "mock" in ast.unparse(node):
            found.append("<unittest.mock imported>")
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            shown = ast.unparse(t)
            if isinstance(t, ast.Attribute) and _root(t) in libraries:
                found += [] if shown.startswith(SWITCHES) else [shown]
        is_setattr = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr"
        if is_setattr and node.args and _root(node.args[0]) in libraries:
            found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_library_is_patched(path):
    assert patched_library_names(path) == []


def test_the_patch_check_catches_the_old_export_patch(tmp_path):
    """The check itself, on the shape logged_model.reused_graphs had (issue 21)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nfrom unittest import mock\n"
        "def f(export):\n"
        "    with mock.patch.object(torch.export, 'export', export):\n"
        "        pass\n"
        "    torch.export.export = export\n"
        "    setattr(torch.export, 'export', export)\n"
    )
    assert patched_library_names(bad) == [
        "<unittest.mock imported>",
        "torch.export.export",
        "setattr(torch.export, 'export', export)",
    ]
    ok = tmp_path / "ok.py"
    ok.write_text("import torch\nx = torch.zeros(1)\ntorch.backends.cudnn.benchmark = True\n")
    assert patched_library_names(ok) == []
