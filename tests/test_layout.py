"""The module layout of docs/architecture.md holds: no import cycle, settings as a leaf, front ends
without the database layer, no imports hidden inside functions."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from twisted.trial.unittest import TestCase

from tests.support import REPO

PACKAGE = "myservices"
FRONT_ENDS = ("chat", "echo", "udp", "framed", "pb", "web", "websocket", "handlers")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text())
    return out


def _statements(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement under C{node}, and whether it is inside a function; TYPE_CHECKING blocks left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for stmt in child.orelse:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _statements(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _targets(stmt: ast.stmt, known: set[str]) -> set[str]:
    """The project modules an import statement names (``from a import b`` names a and a.b, as Python loads both)."""
    names: set[str] = set()
    if isinstance(stmt, ast.Import):
        names = {a.name for a in stmt.names}
    elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
        names = {stmt.module} | {f"{stmt.module}.{a.name}" for a in stmt.names}
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


class LayoutTests(TestCase):
    def setUp(self) -> None:
        self.modules = _modules()
        known = set(self.modules)
        self.graph: dict[str, set[str]] = {}
        self.in_functions: list[str] = []
        for name, tree in self.modules.items():
            edges: set[str] = set()
            for stmt, in_function in _statements(tree):
                targets = _targets(stmt, known) - {name}
                edges |= targets
                if in_function and targets:
                    self.in_functions.append(f"{name}: {ast.unparse(stmt)}")
            self.graph[name] = edges

    def test_no_import_cycle(self) -> None:
        done: set[str] = set()

        def visit(module: str, path: list[str]) -> None:
            if module in path:
                self.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
            if module in done:
                return
            for target in sorted(self.graph[module]):
                visit(target, path + [module])
            done.add(module)

        for module in sorted(self.graph):
            visit(module, [])

    def test_no_project_import_inside_a_function(self) -> None:
        self.assertEqual(self.in_functions, [])

    def test_settings_imports_nothing_of_the_project(self) -> None:
        self.assertEqual(self.graph[f"{PACKAGE}.settings"], set())

    def test_front_ends_do_not_import_the_database_layer(self) -> None:
        offending = [
            f"{module} imports {target}"
            for module, targets in self.graph.items()
            if module.split(".")[1:2] and module.split(".")[1] in FRONT_ENDS
            for target in targets
            if target == f"{PACKAGE}.db" or target.startswith(f"{PACKAGE}.db.")
        ]
        self.assertEqual(offending, [])
