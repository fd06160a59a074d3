"""requirements.txt lists what the Function App imports, and nothing it does not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["function_app.py", "functions", "shared"]  # what scripts/post-deploy.sh zips


def _requirements(name: str) -> set[str]:
    out = set()
    for line in (ROOT / name).read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry and not entry.startswith("-"):
            out.add(re.split(r"[=<>!~\[ ]", entry, maxsplit=1)[0].lower())
    return out


def _shipped_imports() -> set[str]:
    found = set()
    for top in SHIPPED:
        path = ROOT / top
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
    return found


#: Distributions whose import name is not their name with "-" read as ".".
IMPORT_NAMES = {
    "python-pkcs11": "pkcs11",
    "pyjwt": "jwt",
    "opentelemetry-api": "opentelemetry",
    "opentelemetry-sdk": "opentelemetry.sdk",
}


def test_every_runtime_requirement_is_imported_by_shipped_code() -> None:
    imports = _shipped_imports()
    unused = set()
    for requirement in _requirements("requirements.txt"):
        module = IMPORT_NAMES.get(requirement, requirement.replace("-", "."))
        if not any(m == module or m.startswith(module + ".") for m in imports):
            unused.add(requirement)
    assert unused == set(), f"requirements.txt lists what the app never imports: {unused}"


def test_service_sdks_are_development_dependencies_only() -> None:
    runtime, dev = _requirements("requirements.txt"), _requirements("requirements-dev.txt")
    for sdk in ("azure-iot-hub", "azure-iot-deviceprovisioning"):
        assert sdk not in runtime
        assert sdk in dev
    assert "six" in dev  # azure-iot-hub imports six without declaring it
