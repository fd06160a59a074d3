"""Request validation against Microsoft's published service specs (Swagger 2.0).

Each spec in ``specs/`` is loaded once; its operations become routes and every request is
checked before it reaches the emulator:

- ``api-version`` must be present and equal to the spec's version;
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
    _validator: Any = None

    @property
    def werkzeug_rule(self) -> str:
        return _PARAM.sub(lambda m: f"<{m.group(1)}>", self.path)

    def validator(self) -> Any:
        if self._validator is None and self.body_schema is not None:
            self._validator = jsonschema.Draft7Validator(
                self.body_schema, format_checker=_format_checker
            )
        return self._validator

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
        if version != self.api_version:
            raise RequestError(
                400,
                "InvalidApiVersion",
                f"api-version {version!r} is not supported; use {self.api_version}",
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
        validator = self.validator()
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
                elif entry.name != "api-version":
                    operation.params.append(entry)
            operations.append(operation)
    return ServiceSpec(service, version, operations)
