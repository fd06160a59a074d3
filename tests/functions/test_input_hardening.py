"""What reaches certroll from outside cannot break it or leak through it (issue 17,
items 4, 7, 9, 10, 12, 13): through the registered functions over the real rotation
service (``devices_api``, ``twin_changes``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func
import pytest

from functions.parsing.hub_events import parse_twin_change
from shared.bootstrap import Services
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import check_device_id
from shared.domain.model import RotationState
from tests.functions.fakes import user_function
from tests.functions.test_api_real_service import call, real  # noqa: F401 (fixture)
from tests.support.tokens import token

SECRET_KEY = "fUnCt10nKey-9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9=="


def api(method: str, device_id: str, action: str | None, *, query: str, body: bytes = b"") -> Any:
    path = f"devices/{device_id}" + (f"/{action}" if action else "")
    route = {"id": device_id} | ({"action": action} if action else {})
    req = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{path}?{query}",
        headers={"Authorization": f"Bearer {token('erin@example.com')}"},
        params=dict(p.split("=", 1) for p in query.split("&")),
        route_params=route,
        body=body,
    )
    return user_function("devices_api")(req)


def twin_event(device_id: str, reported: dict[str, Any], *, body: bytes | None = None) -> Any:
    return func.EventHubEvent(
        body=body
        if body is not None
        else json.dumps({"version": 2, "properties": {"reported": reported}}).encode(),
        sequence_number=1,
        iothub_metadata={"connection-device-id": device_id},
    )


# --------------------------------------------------------------------------- 4: the function key


def test_the_function_key_in_the_url_is_never_audited_or_shown(
    real: Services,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = api("POST", "dev-1", "disallow", query=f"code={SECRET_KEY}", body=b"{}")
    assert refused.status_code == 400
    [entry] = real.audit.list("dev-1")
    assert (
        entry.detail["route"] == "http://localhost:7071/api/devices/dev-1/disallow?code=[redacted]"
    )
    status = api("GET", "dev-1", None, query=f"code={SECRET_KEY}")
    assert status.status_code == 200, status.get_body()
    body = status.get_body().decode()
    assert "api_disallow" in body
    assert SECRET_KEY not in body
    assert SECRET_KEY not in repr(real.audit.list())
    # nor in a log line (the dev host's request log names the URL too)
    logging.getLogger("werkzeug").info('"GET /api/devices/dev-1?code=%s HTTP/1.1" 200', SECRET_KEY)
    assert SECRET_KEY not in caplog.text
    assert "code=[redacted]" in caplog.text


# --------------------------------------------------------------------------- 7: deep JSON


def test_deeply_nested_json_is_a_400_and_audited(real: Services) -> None:  # noqa: F811
    resp = call("POST", "dev-1", "renew", body=b"[" * 100_000 + b"]" * 100_000)
    assert resp.status_code == 400
    assert json.loads(resp.get_body())["error"]["code"] == "malformed_json"
    [entry] = real.audit.list("dev-1")
    assert (entry.action, entry.outcome, entry.detail["status"]) == ("api_renew", "rejected", 400)


def test_one_deeply_nested_event_does_not_fail_its_batch(real: Services) -> None:  # noqa: F811
    deep = twin_event("dev-1", {}, body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    good = twin_event("dev-1", {"x509": {}})
    user_function("twin_changes")([deep, good])  # does not raise
    assert real.state.get("dev-1") is not None  # the good event was handled


# --------------------------------------------------------------------------- 9: CSR size


def test_a_csr_answer_over_the_policy_limit_is_refused_at_parse(
    real: Services,  # noqa: F811
) -> None:
    resp = call("POST", "dev-1", "renew")
    assert resp.status_code == 202
    rec = real.state.get("dev-1")
    assert rec is not None
    limit = real.settings.int("CERTROLL_CSR_MAX_BYTES")
    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + ("QUJD" * 16 + "\n") * ((limit // 65) + 10)
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    assert limit < len(pem) < 65536
    reported = {"x509": {"csr": {"requestId": rec.request_id, "pem": pem}}}
    with pytest.raises(InvalidRequestError) as info:
        parse_twin_change(
            json.dumps({"properties": {"reported": reported}}),
            {"connection-device-id": "dev-1"},
            csr_max_bytes=limit,
        )
    assert info.value.code == "csr_too_large"
    # through the trigger: refused, not retried, and the record never holds it
    user_function("twin_changes")([twin_event("dev-1", reported)])
    after = real.state.get("dev-1")
    assert after is not None
    assert after.state is RotationState.CSR_REQUESTED
    assert after.csr_pem is None


# --------------------------------------------------------------------------- 10: field names


def test_unknown_field_names_are_echoed_within_a_bound(real: Services) -> None:  # noqa: F811
    body = {f"{'x' * 5000}{i}": 1 for i in range(200)}
    resp = call("POST", "dev-1", "renew", body=body)
    assert resp.status_code == 400
    error = json.loads(resp.get_body())["error"]
    assert error["code"] == "unknown_field"
    assert len(error["message"]) < 400
    assert "and 197 more" in error["message"]
    [entry] = real.audit.list("dev-1")
    assert len(json.dumps(entry.detail)) < 2000


# --------------------------------------------------------------------------- 12: device ids


@pytest.mark.parametrize("device_id", ["dev-1\n", "dev-1\r\n"])
def test_a_device_id_with_a_trailing_newline_is_refused(
    real: Services,  # noqa: F811
    device_id: str,
) -> None:
    with pytest.raises(InvalidRequestError):
        check_device_id(device_id)
    resp = call("POST", device_id, "disallow", body={"reason": "stolen"})
    assert resp.status_code == 400
    assert json.loads(resp.get_body())["error"]["code"] == "device_id_invalid"
    assert list(real.state.list()) == []
    user_function("twin_changes")([twin_event(device_id, {"x509": {}})])
    assert list(real.state.list()) == []


# --------------------------------------------------------------------------- 13: routed messages


def test_a_routed_message_body_cannot_override_the_runtime_properties() -> None:
    body = {
        "body": {"version": 1, "properties": {"reported": {"x509": {}}}},
        "systemProperties": {"iothub-connection-device-id": "victim"},
        "properties": {"deviceId": "victim"},
    }
    parsed = parse_twin_change(
        json.dumps(body), {"iothub-connection-device-id": "sender"}, {"deviceId": "sender"}
    )
    assert parsed is not None
    assert parsed.device_id == "sender"
    # with nothing from the runtime (the local emulator's form) the body's own are used
    local = parse_twin_change(json.dumps(body))
    assert local is not None
    assert local.device_id == "victim"
