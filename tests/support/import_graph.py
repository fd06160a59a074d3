"""The import graph of the project's own modules, read with :mod:`ast` (nothing is imported).

Rules (the same for every caller):

- a node is a module of the project: every ``.py`` file under the named top-level packages,
  and the named top-level modules (``function_app``);
- an edge ``a -> b`` is an import in ``a`` of project module ``b`` that runs when ``a`` or one
  of its functions runs: module-level imports and imports inside functions and methods alike
  (a function-level import that closes a loop is still a loop, only deferred);
- imports under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) never run: no edge;
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the project,
  else to ``pkg``; relative imports are resolved against the importing module;
- importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``: those implicit parent
  edges are left out, so a package ``__init__`` that re-exports its own submodules is not a
  cycle by itself; an explicit import of the package (``from a.b import X``) is an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

#: the project's top-level packages and modules (those absent in a checkout are skipped)
PROJECT_ROOTS = ("shared", "functions", "local", "cli", "function_app")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def project_modules(root: Path, roots: Iterable[str] = PROJECT_ROOTS) -> dict[str, Module]:
    """Every module of the project under ``root``, by dotted name."""
    modules: dict[str, Module] = {}
    for top in roots:
        single = root / f"{top}.py"
        if single.is_file():
            modules[top] = Module(top, single, is_package=False)
        package = root / top
        if not (package / "__init__.py").is_file():
            continue
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if any(not part.isidentifier() for part in parts):
                continue
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_relative(module: Module, level: int, target: str | None) -> str:
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([target] if target else [])])


def imports_of(module: Module, modules: Mapping[str, Module]) -> set[str]:
    """The project modules ``module`` imports at run time."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    found: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
            continue
        base = _resolve_relative(module, node.level, node.module) if node.level else node.module
        if not base:
            continue
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if candidate in modules:
                found.add(candidate)
            elif base in modules:
                found.add(base)
    found.discard(module.name)
    return found


def import_graph(root: Path, roots: Iterable[str] = PROJECT_ROOTS) -> dict[str, set[str]]:
    """``{module: modules it imports at run time}`` over the project under ``root``."""
    modules = project_modules(root, roots)
    return {name: imports_of(module, modules) for name, module in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each one or more import
    cycles), each sorted, largest first (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def one_cycle(graph: Mapping[str, Iterable[str]], component: Iterable[str]) -> list[str]:
    """A shortest loop ``a -> b -> ... -> a`` inside a strongly connected ``component``,
    starting at its first module (for a readable failure message)."""
    members = set(component)
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]
