"""devices_api through the registered function, with real azure.functions requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from shared.adapters.memory import MemoryAuditLog
from shared.bootstrap import Services, override_services
from shared.domain.errors import (
    ConcurrencyError,
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.domain.model import Trigger
from shared.settings import Settings
from tests.functions.fakes import FakeRotation, http_request, user_function
from tests.support.pki import make_csr, make_device_key
from tests.support.tokens import actor_of, auth_settings, oid_of, token

pytestmark = pytest.mark.usefixtures("services")

ALICE = actor_of("alice@example.com")

api = user_function("devices_api")

ROUTES = [("GET", None), ("POST", "disallow"), ("POST", "allow"), ("POST", "renew")]
GOOD_BODY: dict[str | None, dict[str, Any] | None] = {
    None: None,
    "disallow": {"reason": "stolen"},
    "allow": None,
    "renew": None,
}


def call(method: str, device_id: str | None, action: str | None = None, **kw: Any) -> Any:
    kw.setdefault("token", token())
    return api(http_request(method, device_id, action, **kw))


def error_of(resp: Any) -> dict[str, str]:
    assert resp.mimetype == "application/json"
    doc = json.loads(resp.get_body())
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"code", "message"}
    assert doc["error"]["message"]
    return dict(doc["error"])


def assert_only_rejection(audit: MemoryAuditLog, status: int, code: str, actor: str) -> None:
    entries = audit.list()
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry.outcome == "rejected"
    assert entry.actor == actor
    assert entry.detail["status"] == status
    assert entry.detail["code"] == code


# --------------------------------------------------------------------------- authentication
# (every bad token the issue names is in tests/functions/test_api_auth.py, against the real
# rotation service; these check each route and the refusal's shape)


@pytest.mark.parametrize(("method", "action"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
    ],
    ids=["absent", "empty", "bearer-only", "bearer-blank", "basic", "not-jwt", "garbage-jwt"],
)
def test_unauthenticated_is_401_and_changes_nothing(
    method: str,
    action: str | None,
    authorization: str | None,
    fake_rotation: FakeRotation,
    audit: MemoryAuditLog,
) -> None:
    resp = api(
        http_request(method, "dev-1", action, body=GOOD_BODY[action], authorization=authorization)
    )
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthenticated"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake_rotation.calls == []
    assert_only_rejection(audit, 401, "unauthenticated", "anonymous")


@pytest.mark.parametrize(("method", "action"), ROUTES)
@pytest.mark.parametrize(
    "roles", [(), ("Certroll.Reader",), ("certroll.operator",)], ids=["none", "other", "case"]
)
def test_wrong_role_is_403_and_changes_nothing(
    method: str,
    action: str | None,
    roles: tuple[str, ...],
    fake_rotation: FakeRotation,
    audit: MemoryAuditLog,
) -> None:
    resp = call(method, "dev-1", action, body=GOOD_BODY[action], token=token("mallory", roles))
    assert resp.status_code == 403
    error = error_of(resp)
    assert error["code"] == "forbidden"
    assert "Certroll.Operator" in error["message"]
    assert fake_rotation.calls == []
    assert_only_rejection(audit, 403, "forbidden", actor_of("mallory"))
    assert audit.list()[0].detail["caller"]["oid"] == oid_of("mallory")


def test_role_setting_decides_the_role(
    monkeypatch: pytest.MonkeyPatch, fake_rotation: FakeRotation, services: Any
) -> None:
    services.settings = type(services.settings)(
        {**services.settings.values, "CERTROLL_OPERATOR_ROLE": "Fleet.Admin"}
    )
    refused = call("GET", "dev-1")
    assert refused.status_code == 403
    assert "Fleet.Admin" in error_of(refused)["message"]
    ok = call("GET", "dev-1", token=token(roles=("Fleet.Admin",)))
    assert ok.status_code == 200
    assert fake_rotation.names() == ["status"]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_app_only_token_names_the_app_in_the_audit_actor(
    version: str, fake_rotation: FakeRotation
) -> None:
    resp = call("POST", "dev-1", "allow", token=token("nightly-job", app=True, version=version))
    assert resp.status_code == 202
    ((_, (device_id, actor)),) = fake_rotation.calls
    assert device_id == "dev-1"
    assert actor.startswith(f"oid:{oid_of('nightly-job')} app:")


def test_v1_delegated_token_is_accepted(fake_rotation: FakeRotation) -> None:
    resp = call("GET", "dev-1", token=token(version="1.0"))
    assert resp.status_code == 200
    assert fake_rotation.calls == [("status", ("dev-1",))]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("method", "device_id", "action", "body", "code"),
    [
        ("GET", "bad/id", None, None, "device_id_invalid"),
        ("GET", "x" * 129, None, None, "device_id_invalid"),
        ("GET", "", None, None, "device_id_invalid"),
        ("POST", "dev 1", "disallow", {"reason": "r"}, "device_id_invalid"),
        ("GET", "dev-1", None, b'{"x": 1}', "unexpected_body"),
        ("POST", "dev-1", "disallow", None, "body_required"),
        ("POST", "dev-1", "disallow", b"{not json", "malformed_json"),
        ("POST", "dev-1", "disallow", b"\xff\xfe", "malformed_json"),
        ("POST", "dev-1", "disallow", b'["reason"]', "malformed_json"),
        ("POST", "dev-1", "disallow", {}, "reason_required"),
        ("POST", "dev-1", "disallow", {"reason": ""}, "reason_required"),
        ("POST", "dev-1", "disallow", {"reason": "   "}, "reason_required"),
        ("POST", "dev-1", "disallow", {"reason": 42}, "reason_required"),
        ("POST", "dev-1", "disallow", {"reason": "x" * 501}, "reason_too_long"),
        ("POST", "dev-1", "disallow", {"reason": "r", "force": True}, "unknown_field"),
        ("POST", "dev-1", "allow", {"reason": "r"}, "unknown_field"),
        ("POST", "dev-1", "allow", b"nope", "malformed_json"),
        ("POST", "dev-1", "renew", {"reason": "cli"}, "reason_invalid"),
        ("POST", "dev-1", "renew", {"reason": None}, "reason_invalid"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(
    method: str,
    device_id: str,
    action: str | None,
    body: Any,
    code: str,
    fake_rotation: FakeRotation,
    audit: MemoryAuditLog,
) -> None:
    resp = call(method, device_id, action, body=body)
    assert resp.status_code == 400
    assert error_of(resp)["code"] == code
    assert fake_rotation.calls == []
    assert_only_rejection(audit, 400, code, ALICE)


@pytest.mark.parametrize(
    ("method", "action", "status", "code"),
    [
        ("GET", "disallow", 405, "method_not_allowed"),
        ("GET", "renew", 405, "method_not_allowed"),
        ("POST", None, 404, "route_not_found"),
        ("POST", "delete", 404, "route_not_found"),
        ("GET", "certificates", 404, "route_not_found"),
    ],
)
def test_unknown_route_is_refused(
    method: str,
    action: str | None,
    status: int,
    code: str,
    fake_rotation: FakeRotation,
    audit: MemoryAuditLog,
) -> None:
    resp = call(method, "dev-1", action, body={"reason": "r"} if method == "POST" else None)
    assert resp.status_code == status
    assert error_of(resp)["code"] == code
    if status == 405:
        assert resp.headers["Allow"] == "POST"
    assert fake_rotation.calls == []
    assert_only_rejection(audit, status, code, ALICE)


def test_reason_of_500_characters_is_accepted_and_trimmed(fake_rotation: FakeRotation) -> None:
    reason = "r" * 500
    resp = call("POST", "dev-1", "disallow", body={"reason": f"  {reason}\n"})
    assert resp.status_code == 200
    assert fake_rotation.calls == [("disallow", ("dev-1", reason, ALICE))]


# --------------------------------------------------------------------------- service errors


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFoundError("no device dev-1"), 404, "not_found"),
        (DeviceDisallowedError("dev-1 is disallowed"), 409, "device_disallowed"),
        (ConcurrencyError("changed"), 409, "conflict"),
        (InvalidRequestError("device_id_invalid", "bad"), 400, "device_id_invalid"),
        (ServiceError("DPS answered 500", status=500), 502, "upstream_error"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
@pytest.mark.parametrize(("method", "action"), ROUTES)
def test_service_errors_map_to_status(
    method: str,
    action: str | None,
    error: Exception,
    status: int,
    code: str,
    fake_rotation: FakeRotation,
) -> None:
    method_name = {
        None: "status",
        "disallow": "disallow",
        "allow": "allow",
        "renew": "start_renewal",
    }[action]
    fake_rotation.fail[method_name] = error
    resp = call(method, "dev-1", action, body=GOOD_BODY[action])
    assert resp.status_code == status
    body = error_of(resp)
    assert body["code"] == code
    if status == 500:
        assert "boom" not in body["message"]
    assert fake_rotation.names() == [method_name]


@pytest.mark.parametrize(("retry_after", "header"), [(0.2, "1"), (2.5, "3"), (30, "30")])
def test_throttling_is_429_with_retry_after(
    retry_after: float, header: str, fake_rotation: FakeRotation
) -> None:
    fake_rotation.fail["disallow"] = ThrottledError("DPS 429", retry_after=retry_after)
    resp = call("POST", "dev-1", "disallow", body={"reason": "stolen"})
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == header
    assert error_of(resp)["code"] == "throttled"


def test_unknown_device_404_with_known_set(fake_rotation: FakeRotation) -> None:
    fake_rotation.known = {"dev-1"}
    assert call("GET", "dev-1").status_code == 200
    resp = call("GET", "dev-2")
    assert resp.status_code == 404
    assert error_of(resp) == {"code": "not_found", "message": "no device dev-2"}


# --------------------------------------------------------------------------- success


def test_disallow_calls_service_with_actor(fake_rotation: FakeRotation) -> None:
    resp = call(
        "POST",
        "dev-1",
        "disallow",
        body={"reason": "stolen"},
        token=token("bob@example.com"),
    )
    assert resp.status_code == 200
    assert json.loads(resp.get_body()) == {
        "deviceId": "dev-1",
        "revokedSerials": ["1f"],
        "noop": False,
    }
    assert fake_rotation.calls == [("disallow", ("dev-1", "stolen", actor_of("bob@example.com")))]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, Trigger.MANUAL),
        (b"", Trigger.MANUAL),
        ({}, Trigger.MANUAL),
        ({"reason": "compromise"}, Trigger.COMPROMISE),
        ({"reason": "ca-roll"}, Trigger.CA_ROLL),
    ],
)
def test_renew_starts_renewal(body: Any, reason: Trigger, fake_rotation: FakeRotation) -> None:
    resp = call("POST", "dev-1", "renew", body=body)
    assert resp.status_code == 202
    doc = json.loads(resp.get_body())
    assert doc["device_id"] == "dev-1"
    assert doc["state"] == "csr_requested"
    assert doc["updated_at"] == "2026-03-01T12:00:00Z"
    assert "etag" not in doc
    assert fake_rotation.calls == [("start_renewal", ("dev-1", reason, ALICE))]
    assert fake_rotation.calls[0][1][1] is reason


def test_allow_and_status(fake_rotation: FakeRotation) -> None:
    allow = call("POST", "dev.1:a", "allow", body=b"{}")
    assert allow.status_code == 202
    assert json.loads(allow.get_body())["state"] == "csr_requested"
    status = call("GET", "dev.1:a")
    assert status.status_code == 200
    assert json.loads(status.get_body()) == {
        "deviceId": "dev.1:a",
        "state": "idle",
        "updatedAt": "2026-03-01T12:00:00Z",
    }
    assert fake_rotation.names() == ["allow", "status"]


def test_successful_calls_leave_no_rejection_in_audit(
    fake_rotation: FakeRotation, audit: MemoryAuditLog
) -> None:
    for method, action in ROUTES:
        assert call(method, "dev-1", action, body=GOOD_BODY[action]).status_code < 300
    assert audit.list() == []
    assert len(fake_rotation.calls) == len(ROUTES)


def test_rejection_is_answered_even_if_audit_fails(
    fake_rotation: FakeRotation, audit: MemoryAuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(event: Any) -> None:
        raise ServiceError("table down")

    monkeypatch.setattr(audit, "append", broken)
    resp = call("GET", "dev-1", token=None)
    assert resp.status_code == 401
    assert fake_rotation.calls == []


# --------------------------------------------------------------------------- allow with a CSR


def pem_csr(device_id: str = "dev-1", key: str = "ec-p256") -> str:
    return make_csr(device_id, make_device_key(key)).decode()


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda pem: pem, id="as-made"),
        pytest.param(lambda pem: pem.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda pem: "\n  " + pem + "\n\n", id="blanks-around"),
    ],
)
def test_allow_passes_the_csr_to_the_service(
    shape: Callable[[str], str], fake_rotation: FakeRotation, audit: MemoryAuditLog
) -> None:
    csr = shape(pem_csr())
    resp = call("POST", "dev-1", "allow", body={"csr": csr})
    assert resp.status_code == 202, resp.get_body()
    assert json.loads(resp.get_body())["device_id"] == "dev-1"
    assert fake_rotation.calls == [("allow", ("dev-1", ALICE, csr))]
    assert audit.list() == []


def test_allow_without_a_csr_passes_none(fake_rotation: FakeRotation) -> None:
    for body in (None, b"{}", b"  "):
        assert call("POST", "dev-1", "allow", body=body).status_code == 202
    assert fake_rotation.calls == [("allow", ("dev-1", ALICE))] * 3


def _malformed_csrs() -> list[Any]:
    good = pem_csr()
    begin, end = "-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----"
    inner = good.split(begin)[1].split(end)[0]
    return [
        pytest.param(None, "csr_invalid", id="null"),
        pytest.param(42, "csr_invalid", id="number"),
        pytest.param([good], "csr_invalid", id="list"),
        pytest.param({"pem": good}, "csr_invalid", id="object"),
        pytest.param("", "csr_invalid", id="empty"),
        pytest.param("MIIB" + inner.strip(), "csr_invalid", id="no-pem-armour"),
        pytest.param(
            good.replace("CERTIFICATE REQUEST", "CERTIFICATE"), "csr_invalid", id="certificate"
        ),
        pytest.param(
            good.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
            "csr_invalid",
            id="legacy-label",
        ),
        pytest.param(good + good, "csr_invalid", id="two-blocks"),
        pytest.param("subject=CN=dev-1\n" + good, "csr_invalid", id="text-before"),
        pytest.param(good + "junk", "csr_invalid", id="text-after"),
        pytest.param(f"{begin}\n{end}\n", "csr_invalid", id="empty-block"),
        pytest.param(f"{begin}\n{inner.strip()}!\n{end}\n", "csr_invalid", id="not-base64"),
        pytest.param(f"{begin}\nQUJ\n{end}\n", "csr_invalid", id="bad-padding"),
        pytest.param(good.replace("\n", "", 1), "csr_invalid", id="no-line-break"),
        pytest.param("x" * 8193, "csr_too_large", id="too-large"),
        pytest.param(good + " " * (8193 - len(good)), "csr_too_large", id="padded-too-large"),
        pytest.param(good.replace(begin, begin + "é" * 4000), "csr_too_large", id="utf8-bytes"),
    ]


@pytest.mark.parametrize(("csr", "code"), _malformed_csrs())
def test_malformed_csr_is_400_and_changes_nothing(
    csr: Any, code: str, fake_rotation: FakeRotation, audit: MemoryAuditLog
) -> None:
    resp = call("POST", "dev-1", "allow", body={"csr": csr})
    assert resp.status_code == 400, resp.get_body()
    assert error_of(resp)["code"] == code
    assert fake_rotation.calls == []
    assert_only_rejection(audit, 400, code, ALICE)
    assert audit.list()[0].device_id == "dev-1"
    assert audit.list()[0].action == "api_allow"


def test_csr_with_another_field_is_400(fake_rotation: FakeRotation, audit: MemoryAuditLog) -> None:
    resp = call("POST", "dev-1", "allow", body={"csr": pem_csr(), "reason": "back"})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "unknown_field"
    assert fake_rotation.calls == []
    assert_only_rejection(audit, 400, "unknown_field", ALICE)


def test_csr_size_bound_is_the_configured_one(
    fake_rotation: FakeRotation, audit: MemoryAuditLog
) -> None:
    csr = pem_csr(key="rsa-2048")  # about 1 KB
    settings = Settings.from_env(
        {"CERTROLL_STORAGE": "memory", "CERTROLL_CSR_MAX_BYTES": "512", **auth_settings()}
    )
    with override_services(Services(settings, rotation=fake_rotation, audit=audit)):
        resp = call("POST", "dev-1", "allow", body={"csr": csr})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "csr_too_large"
    assert "512" in error_of(resp)["message"]
    assert fake_rotation.calls == []
    assert call("POST", "dev-1", "allow", body={"csr": csr}).status_code == 202


def test_csr_rejected_by_the_service_is_422(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["allow"] = CsrRejectedError("subject_mismatch", "decided by the issuer")
    resp = call("POST", "dev-1", "allow", body={"csr": pem_csr()})
    assert resp.status_code == 422
    assert error_of(resp) == {"code": "subject_mismatch", "message": "decided by the issuer"}
    assert fake_rotation.names() == ["allow"]
