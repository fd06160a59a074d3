"""The OpenAPI document: well-formed, served, and in step with the registered routes."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from functions.api import OPENAPI_PATH, OPERATIONS, documented_routes
from tests.functions.fakes import (
    FakeRotation,
    http_request,
    indexed_functions,
    user_function,
)
from tests.support.tokens import actor_of, token

pytestmark = pytest.mark.usefixtures("services")

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# The parts of the OpenAPI 3.0 document structure this API uses, as a JSON Schema.
OPENAPI_SUBSET = {
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.0\.\d+$"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {"title": {"type": "string"}, "version": {"type": "string"}},
        },
        "servers": {"type": "array", "items": {"type": "object", "required": ["url"]}},
        "paths": {
            "type": "object",
            "propertyNames": {"pattern": "^/"},
            "additionalProperties": {
                "type": "object",
                "propertyNames": {"enum": [*sorted(HTTP_METHODS), "parameters", "summary"]},
                "patternProperties": {
                    "^(get|put|post|delete|patch)$": {
                        "type": "object",
                        "required": ["responses", "operationId"],
                        "properties": {
                            "responses": {
                                "type": "object",
                                "minProperties": 1,
                                "propertyNames": {"pattern": "^([1-5][0-9][0-9]|default)$"},
                                "additionalProperties": {
                                    "type": "object",
                                    "oneOf": [
                                        {"required": ["$ref"]},
                                        {"required": ["description"]},
                                    ],
                                },
                            },
                        },
                    }
                },
            },
        },
        "components": {"type": "object"},
    },
}


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    return doc


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def as_json_schema(doc: dict[str, Any], schema: Any) -> Any:
    """An OpenAPI 3.0 schema object as plain JSON Schema (refs inlined, nullable expanded)."""
    if isinstance(schema, list):
        return [as_json_schema(doc, s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return as_json_schema(doc, resolve(doc, schema["$ref"]))
    out = {k: as_json_schema(doc, v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def documented_from_openapi() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def template_regex(route: str) -> re.Pattern[str]:
    """A host route template (``devices/{id}/{action?}``) as a regex over OpenAPI paths."""
    pattern = ""
    for segment in route.strip("/").split("/"):
        match = re.fullmatch(r"\{(\w+)(\?)?\}", segment)
        if match:
            pattern += r"(?:/[^/]+)?" if match.group(2) else r"/[^/]+"
        else:
            pattern += "/" + re.escape(segment)
    return re.compile(f"^{pattern}$")


def test_document_is_structurally_valid_openapi() -> None:
    doc = document()
    jsonschema.validate(doc, OPENAPI_SUBSET)
    for ref in refs(doc):
        resolve(doc, ref)
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(as_json_schema(doc, schema))
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for m, op in item.items()
        if m in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))


def test_examples_match_their_schemas() -> None:
    doc = document()
    checked = 0
    for item in doc["paths"].values():
        for method, op in item.items():
            if method not in HTTP_METHODS or "requestBody" not in op:
                continue
            media = op["requestBody"]["content"]["application/json"]
            if "example" in media:
                jsonschema.validate(media["example"], as_json_schema(doc, media["schema"]))
                checked += 1
    assert checked >= 2


def test_served_document_is_the_file() -> None:
    req = http_request("GET", None)
    resp = user_function("openapi_document")(req)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert json.loads(resp.get_body()) == document()


def test_every_registered_route_is_documented_and_vice_versa() -> None:
    registered: list[tuple[re.Pattern[str], set[str]]] = []
    for fn in indexed_functions():
        trigger = json.loads(json.dumps(fn.get_trigger().get_dict_repr(), default=str))
        if trigger["type"] == "httpTrigger":
            methods = {str(m).rsplit(".", 1)[-1].upper() for m in trigger["methods"]}
            registered.append((template_regex(trigger["route"]), methods))
    documented = documented_from_openapi()
    assert documented == documented_routes()
    for method, path in documented:
        assert any(rx.match(path) and method in ms for rx, ms in registered), (method, path)
    # and every registered template/method only serves documented paths: each dispatch
    # entry of devices_api is documented, and nothing else is dispatched
    dispatched = {(m, "/devices/{id}" + (f"/{a}" if a else "")) for m, a in OPERATIONS}
    assert dispatched <= documented
    for rx, methods in registered:
        served = {(m, p) for m, p in documented if rx.match(p) and m in methods}
        assert served, f"registered route {rx.pattern} documents nothing"


def test_each_documented_device_route_is_served(fake_rotation: FakeRotation) -> None:
    doc = document()
    api = user_function("devices_api")
    device_id = "pump-0042"  # the device the allow example's CSR was made for
    for method, path in sorted(documented_from_openapi()):
        if not path.startswith("/devices/"):
            continue
        action = path.split("/")[3] if path.count("/") == 3 else None
        op = doc["paths"][path][method.lower()]
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        resp = api(
            http_request(
                method, device_id, action, body=body.get("example"), token=token()
            )
        )
        status = str(resp.status_code)
        assert status in op["responses"], (method, path, status)
        response = op["responses"][status]
        if "$ref" in response:
            response = resolve(doc, response["$ref"])
        schema = response["content"]["application/json"]["schema"]
        jsonschema.validate(json.loads(resp.get_body()), as_json_schema(doc, schema))
    assert len(fake_rotation.calls) == len(OPERATIONS)
    example_csr = doc["paths"]["/devices/{id}/allow"]["post"]["requestBody"]["content"][
        "application/json"
    ]["example"]["csr"]
    assert ("allow", (device_id, actor_of("alice@example.com"), example_csr)) in fake_rotation.calls


@pytest.mark.parametrize(("roles", "status"), [(None, "401"), ((), "403")])
def test_error_responses_match_the_documented_schema(
    roles: tuple[str, ...] | None, status: str
) -> None:
    doc = document()
    bearer = None if roles is None else token(roles=roles)
    resp = user_function("devices_api")(http_request("GET", "dev-1", token=bearer))
    assert str(resp.status_code) == status
    op = doc["paths"]["/devices/{id}"]["get"]
    response = resolve(doc, op["responses"][status]["$ref"])
    schema = as_json_schema(doc, response["content"]["application/json"]["schema"])
    jsonschema.validate(json.loads(resp.get_body()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": {"code": "x"}}, schema)


def test_bearer_scheme_is_described_and_required_by_the_device_routes() -> None:
    doc = document()
    scheme = doc["components"]["securitySchemes"]["entraId"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert scheme["bearerFormat"] == "JWT"
    for fragment in ("RS256", "roles", "api://<client id>", "/v2.0", "sts.windows.net"):
        assert fragment in scheme["description"], fragment
    assert {"functionKey": [], "entraId": []} in doc["security"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            if path.startswith(("/devices/", "/ca/")):
                assert "security" not in op, (method, path)  # the document's: key and token
                assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
            else:
                assert op["security"] == [{"functionKey": []}], (method, path)
    assert "X-MS-CLIENT-PRINCIPAL header never" in doc["info"]["description"]
