"""Which project modules each module names, read with :mod:`ast` (layering rules; the
cycle graph in import_graph.py is narrower: it counts only imports that run).

Every ``import`` and ``from ... import`` counts, wherever it is written (module level,
inside a function, under ``if TYPE_CHECKING``), and so does a module named for
``importlib``: ``import_module("x")`` / ``__import__("x")``, or any string literal that is
exactly the dotted name of a project module (``("local.commands", ...)`` handed to
``import_module`` later). A deployed module must not even name a module that is not
deployed. Edges go only to project modules; ``from pkg import name``
points at ``pkg.name`` when that is a module, else at ``pkg``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: The project's top-level packages and modules (``tests``, ``bench`` not included).
PROJECT_ROOTS = ("function_app", "functions", "shared", "cli", "local")

#: What is deployed to Azure (``scripts/post-deploy.sh`` zips these).
DEPLOYED_ROOTS = ("function_app", "functions", "shared")


def module_files(repo: Path = REPO, roots: Iterable[str] = PROJECT_ROOTS) -> dict[str, Path]:
    """Module name -> source file, for every ``.py`` file under ``roots``."""
    found: dict[str, Path] = {}
    for root in roots:
        single = repo / f"{root}.py"
        if single.is_file():
            found[root] = single
        package = repo / root
        if not package.is_dir():
            continue
        for path in sorted(package.rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _resolve_relative(module: str, level: int, target: str | None, files: dict[str, Path]) -> str:
    base = module.split(".")
    if not _is_package(module, files):
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def _named_modules(node: ast.AST, files: dict[str, Path]) -> Iterator[str]:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``, and
    string literals that are exactly a dotted project module name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if "." in node.value and node.value in files:
            yield node.value
        return
    if not isinstance(node, ast.Call) or not node.args:
        return
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    first = node.args[0]
    if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
        if isinstance(first.value, str) and not first.value.startswith("."):
            yield first.value


def _owning_module(name: str, files: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a project module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in files:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, files: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports (itself excluded)."""
    tree = ast.parse(files[module].read_text(encoding="utf-8"), str(files[module]))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, node.level, node.module, files)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in files else base)
        else:
            names.update(_named_modules(node, files))
    targets = {_owning_module(name, files) for name in names}
    return {t for t in targets if t is not None and t != module}


def import_graph(repo: Path = REPO, roots: Iterable[str] = PROJECT_ROOTS) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module under ``roots``."""
    files = module_files(repo, roots)
    return {module: imports_of(module, files) for module in files}


def root_of(module: str) -> str:
    return module.split(".", 1)[0]
