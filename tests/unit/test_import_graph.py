"""No import cycle among the project's own modules (see tests/support/import_graph.py for
what counts as an edge)."""

from __future__ import annotations

from pathlib import Path

from tests.support.import_graph import cycles, import_graph, one_cycle

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert "function_app" in graph
    assert "shared.bootstrap" in graph
    found = cycles(graph)
    loops = [" -> ".join(one_cycle(graph, component)) for component in found]
    assert not found, "import cycles:\n" + "\n".join(loops)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_function_level_import_that_closes_a_loop_is_a_cycle(tmp_path: Path) -> None:
    # the shape storage_clients and the storage adapters had: the adapters import the
    # error mapping at module level, the bundle builder imports the adapters in a function
    _write(
        tmp_path,
        {
            "shared/__init__.py": "",
            "shared/adapters/__init__.py": "",
            "shared/adapters/clients.py": (
                "def build():\n    from shared.adapters.blob import Blob\n    return Blob()\n"
            ),
            "shared/adapters/blob.py": (
                "from shared.adapters.clients import build\nclass Blob: ...\n"
            ),
        },
    )
    graph = import_graph(tmp_path, ("shared",))
    assert cycles(graph) == [["shared.adapters.blob", "shared.adapters.clients"]]
    assert one_cycle(graph, cycles(graph)[0]) == [
        "shared.adapters.blob",
        "shared.adapters.clients",
        "shared.adapters.blob",
    ]


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import B\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\nimport typing\n"
                "if TYPE_CHECKING:\n    from pkg.a import A\nelse:\n    import pkg.c\n"
                "if typing.TYPE_CHECKING:\n    from pkg import a\n"
                "class B: ...\n"
            ),
            "pkg/c.py": "",
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == []


def test_relative_and_package_imports_resolve_to_modules(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "import pkg.sub.x\n",
            "pkg/__init__.py": "from .sub import x\n",
            "pkg/sub/__init__.py": "from . import y\nfrom ..z import thing\n",
            "pkg/sub/x.py": "from pkg.sub import Y\nimport os\n",
            "pkg/sub/y.py": "",
            "pkg/z.py": "thing = 1\n",
        },
    )
    graph = import_graph(tmp_path, ("pkg", "app"))
    assert graph["app"] == {"pkg.sub.x"}
    assert graph["pkg"] == {"pkg.sub.x"}
    assert graph["pkg.sub"] == {"pkg.sub.y", "pkg.z"}
    # ``from pkg.sub import Y`` runs pkg/sub/__init__: an edge to the package
    assert graph["pkg.sub.x"] == {"pkg.sub"}
    # ...but the implicit parent-package imports are not edges, so no cycle here
    assert cycles(graph) == []


def test_cycles_are_grouped_into_components(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
