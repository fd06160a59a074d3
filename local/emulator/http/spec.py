"""Request validation against Microsoft's published service specs (Swagger 2.0).

Each spec in ``specs/`` is loaded once; its operations become routes and every request is
checked before it reaches the emulator:

- ``api-version`` must be present and one the service accepts: the spec's own, or a later
  one listed in :data:`LATER_VERSIONS` with the definitions it adds;
- required header and query parameters must be present, and integer ones integers;
- a body parameter must be present when required, be JSON (``application/json``), and
  validate against the operation's schema, converted to JSON Schema as follows:
  ``#/definitions`` references are kept; an object definition that lists ``properties``
  and says nothing of ``additionalProperties`` is closed (unknown properties are
  rejected, so a misspelt field fails loudly); a bare ``{"type": "object"}`` with no
  properties (twin collections, method payloads, tags) accepts any JSON value, as the
  services do; ``null`` is not accepted where the spec gives a type; ``date-time`` strings
  must be ISO 8601 with a time zone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

SPEC_DIR = Path(__file__).parent / "specs"
SPEC_FILES = {
    "dps": "dps-service-2021-10-01.json",
    "hub": "iothub-service-2020-03-13.json",
}
#: Later api-versions each service accepts, with the definition properties they add to
#: the spec's. IoT Hub: Microsoft's azure-iot-hub 2.7.0 sends 2021-04-12 (its generated
#: ``IotHubGatewayServiceAPIs.api_version``); its generated models
#: (``azure/iot/hub/protocol/models/*.py``, ``_attribute_map``) differ from the
#: 2020-03-13 swagger only by ``parentScopes`` on Device, ExportImportDevice and Twin and
#: ``identity`` (ManagedIdentity) on JobProperties. No JSON swagger of 2021-04-12 is
#: published (see specs/SOURCES.md).
LATER_VERSIONS: dict[str, dict[str, dict[str, Any]]] = {
    "hub": {
        "2021-04-12": {
            "Device": {"parentScopes": {"type": "array", "items": {"type": "string"}}},
            "ExportImportDevice": {"parentScopes": {"type": "array", "items": {"type": "string"}}},
            "Twin": {"parentScopes": {"type": "array", "items": {"type": "string"}}},
            "JobProperties": {
                "identity": {
                    "type": "object",
                    "properties": {"userAssignedIdentity": {"type": "string"}},
                    "additionalProperties": False,
                }
            },
        }
    },
    "dps": {},
}
_DROP = frozenset({"description", "example", "default", "title", "x-nullable"})
_PARAM = re.compile(r"\{([^}]+)\}")


class RequestError(Exception):
    """A request the service would refuse: HTTP ``status``, error ``name`` and message."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{status} {name}: {message}")
        self.status = status
        self.name = name
        self.message = message


def to_json_schema(node: Any) -> Any:
    """One Swagger 2.0 schema object as JSON Schema (draft 7), by the rules above."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return {"$ref": node["$ref"]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key.startswith("x-"):
            continue
        if key == "format" and value != "date-time":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out:
        if "additionalProperties" not in out:
            return {}  # free-form: any JSON value
    elif "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


_format_checker = jsonschema.FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)  # type: ignore[untyped-decorator]
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value:
        raise ValueError("not an ISO 8601 date-time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a date-time needs a time zone")
    return True


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # query | header | path | body
    required: bool
    type: str | None = None


@dataclass
class Operation:
    service: str
    operation_id: str
    method: str
    path: str  # the spec's template, e.g. /enrollments/{id}
    api_version: str
    params: list[Param] = field(default_factory=list)
    body: Param | None = None
    body_schema: dict[str, Any] | None = None
    # later api-versions accepted -> the body schema under that version
    later_schemas: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _validators: dict[str, Any] = field(default_factory=dict)

    @property
    def werkzeug_rule(self) -> str:
        return _PARAM.sub(lambda m: f"<{m.group(1)}>", self.path)

    @property
    def api_versions(self) -> tuple[str, ...]:
        return (self.api_version, *self.later_schemas)

    def validator(self, version: str | None = None) -> Any:
        version = version or self.api_version
        schema = self.body_schema if version == self.api_version else self.later_schemas[version]
        if version not in self._validators and schema is not None:
            self._validators[version] = jsonschema.Draft7Validator(
                schema, format_checker=_format_checker
            )
        return self._validators.get(version)

    def validate(
        self,
        query: Mapping[str, str],
        headers: Any,
        content_type: str | None,
        raw_body: bytes,
    ) -> Any:
        """The parsed JSON body (None when the operation has none); RequestError if invalid."""
        version = query.get("api-version")
        if not version:
            raise RequestError(
                400, "ApiVersionMissing", "the api-version query parameter is required"
            )
        if version not in self.api_versions:
            raise RequestError(
                400,
                "InvalidApiVersion",
                f"api-version {version!r} is not supported; use one of "
                + ", ".join(self.api_versions),
            )
        for param in self.params:
            source = query if param.location == "query" else headers
            if param.location not in ("query", "header"):
                continue
            value = source.get(param.name)
            if value is None or value == "":
                if param.required:
                    raise RequestError(
                        400, "ArgumentNull", f"{param.location} parameter {param.name} is required"
                    )
                continue
            if param.type == "integer":
                try:
                    int(value)
                except ValueError:
                    raise RequestError(
                        400, "ArgumentInvalid", f"{param.name} must be an integer, not {value!r}"
                    ) from None
        if self.body is None:
            return None
        if not raw_body.strip():
            if self.body.required:
                raise RequestError(400, "ArgumentNull", f"a {self.body.name} body is required")
            return None
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise RequestError(
                415, "UnsupportedMediaType", f"Content-Type must be application/json, not {media!r}"
            )
        try:
            body = json.loads(raw_body)
        except ValueError as exc:
            raise RequestError(400, "BadFormat", f"the body is not JSON: {exc}") from None
        validator = self.validator(version)
        if validator is not None:
            errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
            if errors:
                first = errors[0]
                where = "/".join(str(p) for p in first.absolute_path) or "(body)"
                raise RequestError(
                    400, "ArgumentInvalid", f"{self.body.name} {where}: {first.message}"
                )
        return body


@dataclass
class ServiceSpec:
    service: str
    api_version: str
    operations: list[Operation]


def _resolve_param(spec: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in raw:
        name = raw["$ref"].rsplit("/", 1)[1]
        resolved: dict[str, Any] = spec["parameters"][name]
        return resolved
    return raw


def _with_added(definitions: dict[str, Any], added: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = dict(definitions)
    for name, properties in added.items():
        base = dict(out[name])
        base["properties"] = {**base.get("properties", {}), **properties}
        out[name] = base
    return out


@cache
def load_spec(service: str) -> ServiceSpec:
    """The parsed spec of ``service`` ("dps" or "hub")."""
    raw = json.loads((SPEC_DIR / SPEC_FILES[service]).read_text(encoding="utf-8"))
    version = raw["info"]["version"]
    definitions = {name: to_json_schema(d) for name, d in raw.get("definitions", {}).items()}
    operations: list[Operation] = []
    for path, item in raw["paths"].items():
        shared_params = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            operation = Operation(service, op["operationId"], method.upper(), path, version)
            for p in [*shared_params, *op.get("parameters", [])]:
                param = _resolve_param(raw, p)
                entry = Param(
                    param["name"], param["in"], bool(param.get("required")), param.get("type")
                )
                if entry.location == "body":
                    operation.body = entry
                    operation.body_schema = {
                        "definitions": definitions,
                        "allOf": [to_json_schema(param["schema"])],
                    }
                    for later, added in LATER_VERSIONS[service].items():
                        operation.later_schemas[later] = {
                            "definitions": _with_added(definitions, added),
                            "allOf": [to_json_schema(param["schema"])],
                        }
                elif entry.name != "api-version":
                    operation.params.append(entry)
            if operation.body is None:
                operation.later_schemas = dict.fromkeys(LATER_VERSIONS[service])
            operations.append(operation)
    return ServiceSpec(service, version, operations)
