"""The package's shape (docs/architecture.md): no import circles, small modules, a short top level.

Imports are read from the source (ast), wherever they are: at module top, inside functions, or
under `if TYPE_CHECKING:`, so a circle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrainer"
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 6
# The CLI imports the heavy entry points inside its commands, so that --help stays instant.
LAZY_ENTRY_POINTS = {"retrainer.pipeline", "retrainer.classify.run", "retrainer.beam.pipeline",
                     "retrainer.classify.imagenet"}
# docs/architecture.md's layers, bottom up: each imports only from those before it.
LAYERS = ["errors", "io", "data", "formats", "security", "extractors", "engines", "cache",
          "training", "explain", "reports", "audit", "classify", "exports", "beam", "config",
          "result", "pipeline", "api", "cli"]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(path: Path, known: set[str], root: Path = PACKAGE) -> list[tuple[str, int, bool]]:
    """(imported module of `known`, line, inside a function) for every import statement."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [base] + [f"{base}.{alias.name}" for alias in child.names]
            for target in targets:
                if target in known and target != name:
                    found.append((target, child.lineno, in_function))
            visit(child, local)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    return {name: {target for target, _, _ in imports(path, set(found), root)}
            for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return result


def test_no_import_circles_inside_the_package():
    assert circles(import_graph()) == []


def test_retrainer_modules_are_imported_at_module_top():
    """Only the CLI may import the heavy entry points inside a function (lazy, for --help)."""
    known = set(modules())
    hidden = [f"{module_name(path)}:{line} imports {target}"
              for path in modules().values() for target, line, in_function in imports(path, known)
              if in_function and not (module_name(path).startswith("retrainer.cli")
                                      and target in LAZY_ENTRY_POINTS)]
    assert hidden == []


def test_modules_are_small_and_the_top_level_short():
    long = {name: lines for name, path in modules().items()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level



def test_each_layer_imports_only_the_layers_below_it():
    def layer(module: str) -> str:
        return module.split(".")[1] if module.count(".") else "retrainer"

    graph = import_graph()
    assert {layer(name) for name in graph} - {"retrainer"} == set(LAYERS)  # a new one: place it
    upward = sorted(f"{name} imports {target}" for name, targets in graph.items()
                    for target in targets if layer(name) in LAYERS and layer(target) in LAYERS
                    and LAYERS.index(layer(target)) > LAYERS.index(layer(name)))
    assert upward == []


def test_every_package_folder_has_an_init_so_wheels_include_it():
    """setuptools' packages.find (pyproject.toml) skips a folder without __init__.py: its modules
    would be missing from an installed wheel, though they import from a checkout."""
    bare = sorted(str(folder.relative_to(PACKAGE)) for folder in PACKAGE.rglob("*")
                  if folder.is_dir() and any(folder.glob("*.py"))
                  and not (folder / "__init__.py").exists())
    assert bare == []


@pytest.mark.parametrize("source, circle", [
    ("from retrainer.b import x\n", True),
    ("def f():\n    from retrainer.b import x\n", True),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from retrainer import b\n", True),
    ("import retrainer.c\n", False),
])
def test_a_planted_circle_is_found_wherever_the_import_hides(tmp_path, source, circle):
    package = tmp_path / "retrainer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(source)
    (package / "b.py").write_text("import retrainer.a\n")
    (package / "c.py").write_text("")
    assert (circles(import_graph(package)) == [["retrainer.a", "retrainer.b"]]) == circle
