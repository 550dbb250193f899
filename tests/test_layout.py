"""The tree's shape: no import circle between its modules (the library's, the benchmarks' and the scripts';
imports for type checking included), no script importing an entry point, files a reader can hold."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "segattn")


ENTRY_POINTS = ("train", "eval", "export")


def _modules(tree: bool = False) -> dict[str, str]:
    """Dotted module name -> file, for every module of the segattn package; with ``tree`` also of benchmarks/,
    the scripts (imported by their bare names: each script puts scripts/ on the path) and the entry points."""
    found = {}
    for package in ("segattn", "benchmarks") if tree else ("segattn",):
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                    found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    if tree:
        scripts = os.path.join(REPO, "scripts")
        found.update({f[:-3]: os.path.join(scripts, f) for f in os.listdir(scripts) if f.endswith(".py")})
        found.update({name: os.path.join(REPO, f"{name}.py") for name in ENTRY_POINTS})
    return found


def import_graph(tree: bool = False) -> dict[str, set[str]]:
    """Module -> the modules (of ``_modules(tree)``) it imports anywhere in its file (in functions and under
    ``if TYPE_CHECKING:`` too); ``from .pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``."""
    modules = _modules(tree)
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_no_module_imports_itself_back():
    graph = import_graph(tree=True)
    circles, done = [], set()

    def visit(node, path):
        if node in path:
            circles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_script_or_benchmark_imports_an_entry_point():
    """train.py, eval.py and export.py are Hydra entry points: a script or benchmark trains through the library
    (segattn.engine.train) or runs the entry point in a process of its own."""
    graph = import_graph(tree=True)
    importers = {f"{name} -> {entry}" for name, edges in graph.items() for entry in ENTRY_POINTS if entry in edges}
    assert not importers, sorted(importers)


def test_no_file_or_function_too_long_to_read():
    """Every module under segattn/ stays under 500 lines and every function under 80: what a reader can
    hold at once (a long one is split where it has parts)."""
    long_files, long_functions = [], []
    for name, path in _modules().items():
        text = open(path).read()
        if text.count("\n") > 500:
            long_files.append(f"{name} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_files and not long_functions, (long_files, long_functions)
