"""No import cycle anywhere in quantir: the module-level imports between quantir modules (imports inside functions
and under `if TYPE_CHECKING:` do not run at import time, so they cannot form a cycle) make an acyclic graph."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ir", "compiler", "frontends", "backends", "tools")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["quantir", *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop(0)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append(stmt)
        elif isinstance(stmt, ast.If) and not _is_type_checking(stmt.test):
            pending += [*stmt.body, *stmt.orelse]
        elif isinstance(stmt, ast.Try):
            pending += [*stmt.body, *stmt.orelse, *stmt.finalbody, *(s for h in stmt.handlers for s in h.body)]
    return found


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for stmt in _top_level_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif stmt.module and stmt.level == 0:
                targets = [f"{stmt.module}.{a.name}" if f"{stmt.module}.{a.name}" in modules else stmt.module
                           for a in stmt.names]  # fmt: skip
            else:
                targets = []
            for target in targets:
                # importing a.b.c runs a/__init__ and a/b/__init__ first; a package the importer lives in is already
                # initializing then (only importing a name from it directly, `from a import x`, needs it done)
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    passing_through_own_package = i < len(parts) and name.startswith(dep + ".")
                    if dep in modules and dep != name and not passing_through_own_package:
                        graph[name].add(dep)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    modules = _modules()
    assert "quantir.compiler.pass_manager" in modules and "quantir.backends.registry" in modules
    cycle = _cycle(_edges(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
