"""The rotation package's shape: small modules, no import cycle, no SDK in the domain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECKED = ("shared/domain", "functions")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in CHECKED for p in sorted((ROOT / folder).rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports (TYPE_CHECKING imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import module`` depends on the module, not the package
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            names = submodules if all(m in known for m in submodules) else [node.module]
        for name in names:
            if name in known:
                found.add(name)
    return found


def test_no_import_cycle_in_the_domain_and_the_triggers() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    # a package imports its modules in __init__; its modules importing a sibling through
    # the package name would be a cycle, which is what is looked for
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "shared/domain/rotation").glob("*.py")), ids=lambda p: p.name
)
def test_rotation_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 300


def test_the_domain_imports_no_sdk_and_no_adapter() -> None:
    for path in sorted((ROOT / "shared/domain").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            assert not module.startswith(
                ("azure", "shared.adapters", "shared.pki", "shared.bootstrap", "functions")
            ), f"{path.relative_to(ROOT)} imports {module}"
