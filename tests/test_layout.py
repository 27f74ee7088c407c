"""The code's shape, read from its source: the library's modules import one another without a
circle (imports inside functions count), the library never imports KFP, and no function of the
library, the components or the pipelines is longer than 80 lines but the one a comment names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
# a KFP pipeline's signature is its parameter list in the UI; the body wires the stages
LONG_BY_DESIGN = {("pipelines/unified_supervision.py", "unified_supervision")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> set[str]:
    """Every module named by an import anywhere in the tree, with ``from m import x`` also as ``m.x``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def library_imports() -> dict[str, set[str]]:
    """unisup module -> the unisup modules it imports."""
    trees = {_module_name(p): ast.parse(p.read_text()) for p in (ROOT / "unisup").rglob("*.py")}
    return {name: {m for m in _imports(tree) if m in trees and m != name} for name, tree in trees.items()}


def import_circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_import_circles_are_found():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_the_library_has_no_import_circle():
    assert import_circles(library_imports()) == []


def test_the_library_never_imports_kfp():
    users = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "unisup").rglob("*.py")
        if any(m == "kfp" or m.startswith("kfp.") for m in _imports(ast.parse(p.read_text())))
    ]
    assert users == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for folder in ("unisup", "components", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    where = (str(path.relative_to(ROOT)), node.name)
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES and where not in LONG_BY_DESIGN:
                        long.append(f"{where[0]}::{where[1]} ({lines} lines)")
    assert long == []
