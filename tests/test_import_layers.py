"""The package's import graph has no cycle, counting every import statement: at module top, inside functions
and methods, and under ``if``/``try`` (``if TYPE_CHECKING:`` blocks alone are left out: they never run).

The layer order itself is import-linter's contract (``[tool.importlinter]`` in pyproject.toml, ``lint-imports``
in ``.ci/run``); this test sees the same imports through the source's syntax tree, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "aggpose_jax"
ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> set[str]:
    """The package's modules that one import statement loads (``from a import b`` is module a.b if one exists)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE) and name != module:
            found.add(name)
    return found


def import_graph() -> tuple[dict[str, set[str]], int]:
    """(module -> package modules it imports, number of such imports inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    inner = 0
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
                continue
            targets = _imported(module, path.name == "__init__.py", node, modules)
            graph[module] |= targets
            anc = node
            while anc in parents and targets:
                anc = parents[anc]
                if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inner += 1
                    break
    return graph, inner


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert cycles(graph) == []
    assert cycles({**graph, "c": {"a"}}) == [["a", "b", "c"]]
    source = "def f():\n    from aggpose_jax import params\n"
    tree = ast.parse(source)
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules = {"aggpose_jax": None, "aggpose_jax.params": None, "aggpose_jax.pose": None}
    assert _imported("aggpose_jax.pose", True, node, modules) == {"aggpose_jax.params"}


def test_no_import_cycle_in_the_package():
    graph, _ = import_graph()
    assert len(graph) > 50 and graph["aggpose_jax.job"]  # the walk found the package
    assert cycles(graph) == []
