"""The package's structure stays as docs/architecture.md describes it: no import cycles among its modules
(function-local imports counted), every function-local import of the package's own modules says why it
is not at the top (it keeps a heavy library, or the component table, off a fast path), components are named in
one place, and only the CLI prints or exits."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "hotelbot_cli"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(module: str, is_package: bool, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, is_package, node):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                own_child = is_package and target.startswith(module + ".")
                if target and target != module and not own_child and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of 2+ modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_package_modules():
    graph = import_graph()
    assert "hotelbot_cli.components.base" in graph and graph["hotelbot_cli.pipeline.train"]
    assert cycles(graph) == []


def test_every_function_local_import_of_the_package_says_why():
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text("utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:` and optional imports at the top
                top |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top and node.level:
                around = lines[node.lineno - 2:node.end_lineno]  # the line before, or the statement's own
                if not any("#" in line for line in around):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert unexplained == []


def test_components_are_named_in_one_place():
    """Outside hotelbot_cli/components/, no code compares a value with a built-in component's name."""
    names = {"classifier", "knowledge", "entities", "sentiment", "generator"}
    branches = []
    for path in PACKAGE.rglob("*.py"):
        if "components" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
                    branches.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert branches == []


def test_the_library_never_prints_or_exits():
    """Only hotelbot_cli/cli/ prints, exits or imports a terminal library (typer, rich, click): the library
    raises a HotelbotError and the CLI renders it."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id in {"print", "exit", "quit"}:
                    found.append(f"{where} {fn.id}()")
                elif (isinstance(fn, ast.Attribute) and fn.attr in {"exit", "_exit"} and isinstance(fn.value, ast.Name)
                      and fn.value.id in {"sys", "os"}):
                    found.append(f"{where} {fn.value.id}.{fn.attr}()")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{where} import {m}" for m in modules if m.split(".")[0] in {"typer", "rich", "click"}]
    assert found == []
