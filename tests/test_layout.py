"""The library's shape: no import circle between its modules (imports for type checking included)."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "segattn")


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the segattn package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the segattn modules it imports anywhere in its file (in functions and under
    ``if TYPE_CHECKING:`` too); ``from .pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``."""
    modules = _modules()
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
    graph = import_graph()
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
