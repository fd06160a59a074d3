"""Nothing deployed imports the local stack or the command line."""

from __future__ import annotations

from pathlib import Path

from tests.support.reference_graph import (
    DEPLOYED_ROOTS,
    PROJECT_ROOTS,
    import_graph,
    module_files,
    root_of,
)

NOT_DEPLOYED = ("local", "cli")


def test_deployed_modules_import_neither_local_nor_the_cli() -> None:
    graph = import_graph()
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if root_of(module) in DEPLOYED_ROOTS
        for target in targets
        if root_of(target) in NOT_DEPLOYED
    )
    assert offending == []


def test_the_graph_sees_every_project_package() -> None:
    graph = import_graph()
    assert {root_of(m) for m in graph} == set(PROJECT_ROOTS)
    assert "local.stack" in graph["cli.localstack"]  # imported inside a function
    assert "shared.render" in graph["functions._services"]
    assert "cli.pki" in graph["cli.main"]  # ``from cli import pki``


def test_the_graph_catches_lazy_relative_and_named_imports(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "a.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from local import stack\n"
        "    return importlib.import_module('cli.main')\n"
    )
    (tmp_path / "shared" / "b.py").write_text("from . import a\nfrom .a import f\n")
    (tmp_path / "shared" / "c.py").write_text(
        '"""Not local.stack.json."""\nMODULES = ("local.stack", "cli")\n'
    )
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "__init__.py").write_text("")
    (tmp_path / "local" / "stack.py").write_text("")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("")
    (tmp_path / "cli" / "main.py").write_text("")
    graph = import_graph(tmp_path, ("shared", "local", "cli"))
    assert graph["shared.a"] == {"local.stack", "cli.main"}
    assert graph["shared.b"] == {"shared.a"}
    assert graph["shared.c"] == {"local.stack"}
    assert set(module_files(tmp_path, ("shared",))) == {
        "shared",
        "shared.a",
        "shared.b",
        "shared.c",
    }
