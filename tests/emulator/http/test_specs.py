"""The front end validates against Microsoft's specs, unchanged, converted as documented."""

from __future__ import annotations

import hashlib

import pytest

from local.emulator.http.spec import SPEC_DIR, SPEC_FILES, load_spec, to_json_schema

SHA256 = {
    "dps-service-2021-10-01.json": (
        "90224516f05e883ebb7066bc48612ca05a0b92f0337600d73bc20ba968c30034"
    ),
    "iothub-service-2020-03-13.json": (
        "734545bb510d775715745ba8a05a27be94e6f281d943a6050e05c30afa45e7be"
    ),
}


@pytest.mark.parametrize("name", sorted(SPEC_FILES.values()))
def test_spec_files_are_the_published_ones(name: str) -> None:
    assert hashlib.sha256((SPEC_DIR / name).read_bytes()).hexdigest() == SHA256[name]


def test_specs_load_with_their_versions_and_operations() -> None:
    dps, hub = load_spec("dps"), load_spec("hub")
    assert (dps.api_version, hub.api_version) == ("2021-10-01", "2020-03-13")
    dps_ops = {op.operation_id: op for op in dps.operations}
    hub_ops = {op.operation_id: op for op in hub.operations}
    assert dps_ops["IndividualEnrollment_CreateOrUpdate"].path == "/enrollments/{id}"
    assert hub_ops["Devices_InvokeMethod"].werkzeug_rule == "/twins/<deviceId>/methods"
    query = dps_ops["IndividualEnrollment_Query"]
    assert {(p.name, p.type) for p in query.params} >= {("x-ms-max-item-count", "integer")}


def test_conversion_rules() -> None:
    closed = to_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    assert closed["additionalProperties"] is False
    open_map = to_json_schema({"type": "object", "additionalProperties": {"type": "object"}})
    assert open_map == {"type": "object", "additionalProperties": {}}
    assert to_json_schema({"type": "object", "description": "any payload"}) == {}
    assert to_json_schema({"type": "integer", "format": "int32"}) == {"type": "integer"}
    assert to_json_schema({"type": "string", "format": "date-time"})["format"] == "date-time"
    ref = to_json_schema({"$ref": "#/definitions/X", "readOnly": True})
    assert ref == {"$ref": "#/definitions/X"}


def test_later_hub_version_adds_exactly_what_azure_iot_hub_models_add() -> None:
    """The 2021-04-12 additions in LATER_VERSIONS are the properties azure-iot-hub 2.7.0's
    generated models have and the 2020-03-13 swagger lacks, no more and no fewer."""
    import json as jsonlib

    import azure.iot.hub.protocol.models as models

    from local.emulator.http.spec import LATER_VERSIONS, SPEC_DIR, SPEC_FILES

    spec = jsonlib.loads((SPEC_DIR / SPEC_FILES["hub"]).read_text())
    found: dict[str, set[str]] = {}
    for name in dir(models):
        attribute_map = getattr(getattr(models, name), "_attribute_map", None)
        if not attribute_map or name not in spec["definitions"]:
            continue
        keys = {v["key"].split(".")[0] for v in attribute_map.values()}
        extra = keys - set(spec["definitions"][name].get("properties", {}))
        if extra:
            found[name] = extra
    added = {name: set(props) for name, props in LATER_VERSIONS["hub"]["2021-04-12"].items()}
    assert found == added
