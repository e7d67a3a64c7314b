"""No import cycle in src/modelpack: read every module's imports from its AST (nothing is imported to do it).

Module-level imports (those that run when a module is imported, including inside a module-level `if` or `try`) may
form no cycle anywhere. Inside `serve/`, where the layers run one way (server -> app -> routes -> protocols -> core
and its guard -> repository -> model, batcher), imports inside functions count too: a deferred import that closes a
loop is still a loop, only hidden. Imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

Edge = tuple[str, str, str]  # (importer, imported, "file:line")


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imports(tree: ast.Module, deep: bool) -> list[ast.Import | ast.ImportFrom]:
    """The module's import statements: at module level (in `if`/`try`/`with` too), and with `deep` inside
    functions and classes as well; never under `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    walk(node.body, top)
                walk(node.orelse, top)
            elif isinstance(node, ast.Try):
                walk(node.body, top)
                for handler in node.handlers:
                    walk(handler.body, top)
                walk(node.orelse, top)
                walk(node.finalbody, top)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                walk(node.body, top)
            elif deep and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(node.body, False)

    walk(tree.body, True)
    return out


def import_graph(root: Path, deep_under: str | None = None) -> dict[str, list[Edge]]:
    """Each module's imports of other modules of the tree; function-level ones too for modules under `deep_under`."""
    modules = _modules(root)
    graph: dict[str, list[Edge]] = {}
    for name, (path, package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = name if package else name.rpartition(".")[0]
        deep = deep_under is not None and (name == deep_under or name.startswith(deep_under + "."))
        edges: list[Edge] = []
        for node in _imports(tree, deep):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg/__init__.
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            where = f"{path.relative_to(root)}:{node.lineno}"
            edges += [(name, t, where) for t in dict.fromkeys(targets) if t in modules and t != name
                      and not name.startswith(t + ".")]  # a package's own __init__ runs before its modules
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One cycle, as the imports that close it (importer, imported, where), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Edge] = []

    def visit(node: str) -> list[Edge] | None:
        state[node] = 1
        for edge in graph.get(node, []):
            target = edge[1]
            if state.get(target) == 1:
                start = next(i for i, e in enumerate(path) if e[0] == target) if path and target != node else None
                return (path[start:] if start is not None else []) + [edge]
            if target not in state:
                path.append(edge)
                found = visit(target)
                if found:
                    return found
                path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _report(cycle: list[Edge]) -> str:
    return "import cycle: " + " -> ".join(e[0] for e in cycle) + f" -> {cycle[0][0]}\n" + "\n".join(
        f"  {a} imports {b} at {where}" for a, b, where in cycle)


def test_no_module_level_import_cycle_in_modelpack() -> None:
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, _report(cycle)


def test_no_import_cycle_inside_serve_even_through_deferred_imports() -> None:
    graph = import_graph(SRC, deep_under="modelpack.serve")
    serve = {name: [e for e in edges if e[1].startswith("modelpack.serve")]
             for name, edges in graph.items() if name.startswith("modelpack.serve")}
    cycle = find_cycle(serve)
    assert cycle is None, _report(cycle)


@pytest.mark.parametrize("deferred", [False, True])
def test_the_check_finds_and_names_a_cycle(tmp_path: Path, deferred: bool) -> None:
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nfrom .sub import b\nif TYPE_CHECKING:\n"
                              "    from . import c\n")
    inner = "def f():\n    from .. import a\n" if deferred else "from ..a import something\n"
    (pkg / "sub" / "b.py").write_text(inner)
    (pkg / "c.py").write_text("from . import a\n")  # a -> c only under TYPE_CHECKING: not a cycle
    graph = import_graph(tmp_path, deep_under="demo" if deferred else None)
    cycle = find_cycle(graph)
    assert cycle is not None
    report = _report(cycle)
    assert "demo.a -> demo.sub.b -> demo.a" in report and "demo/sub/b.py:" in report, report
    # Without the deferred imports counted, the deferred loop is invisible; the module-level one never is.
    assert (find_cycle(import_graph(tmp_path)) is None) == deferred
