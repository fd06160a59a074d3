"""Operator API authentication against the loopback token issuer, over the real service.

Every bad credential is sent to the most damaging call (``disallow``) of a device that
exists in the emulated hub and DPS, and must be refused with 401/403 and a JSON error,
leave exactly one ``rejected`` audit record that does not hold the token, and change no
device: no rotation record, hub identity and enrollment as they were, nothing issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.emulator import FleetEmulator
from local.token_issuer import LocalTokenIssuer
from shared.adapters.memory import MemoryAuditLog
from shared.bootstrap import Services, override_services
from shared.clock import ManualClock
from shared.domain.model import (
    AuthType,
    CertificateSlot,
    DeviceIdentity,
    DeviceStatus,
    IndividualEnrollment,
    ProvisioningStatus,
)
from shared.settings import Settings
from tests.functions.fakes import http_request, user_function
from tests.support.pki import make_test_authority
from tests.support.tokens import OPERATOR_ROLE, actor_of, auth_settings, issuer, oid_of, token

DEVICE = "dev-1"
THUMBPRINT = "ab" * 32
OTHER_TENANT = "11111111-2222-3333-4444-555555555555"


def make_services(**extra: str) -> Services:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    clock = ManualClock(now)
    emulator = FleetEmulator(clock, enforce_limits=False)
    emulator.hub.create_device(
        DeviceIdentity(DEVICE, auth_type=AuthType.SELF_SIGNED, primary_thumbprint=THUMBPRINT)
    )
    authority = make_test_authority(now=now)
    emulator.dps.put_individual(
        IndividualEnrollment(
            DEVICE, DEVICE, primary=CertificateSlot(pem=_pem(authority.certificate))
        )
    )
    return Services(
        Settings.from_env({"CERTROLL_STORAGE": "memory", **auth_settings(), **extra}),
        clock=clock,
        enrollments=emulator.dps,
        registry=emulator.hub,
        authority=authority,
    )


def _pem(cert: Any) -> str:
    return str(cert.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture
def real() -> Iterator[Services]:
    with override_services(make_services()) as services:
        yield services


def disallow(**kw: Any) -> Any:
    return user_function("devices_api")(
        http_request("POST", DEVICE, "disallow", body={"reason": "reported stolen"}, **kw)
    )


def assert_refused(real: Services, resp: Any, status: int, code: str, secret: str = "") -> None:
    """``status``/``code`` as JSON, one rejected audit record without ``secret``, and the
    device as it was."""
    assert resp.status_code == status, resp.get_body()
    assert resp.mimetype == "application/json"
    body = json.loads(resp.get_body())
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    audit: MemoryAuditLog = real.audit  # type: ignore[assignment]
    entries = audit.list()
    assert [(e.action, e.outcome) for e in entries] == [("api_disallow", "rejected")]
    assert entries[0].detail["status"] == status
    if secret:
        recorded = json.dumps([entries[0].actor, entries[0].detail], default=str)
        for part in secret.split("."):
            if len(part) > 8:
                assert part not in recorded, "the audit record holds the token"
        assert secret not in resp.get_body().decode()
    # no change to any device
    assert list(real.state.list()) == []
    assert real.ledger.list_for_device(DEVICE) == []
    identity = real.registry.get_device(DEVICE)
    assert identity.status is DeviceStatus.ENABLED
    assert identity.primary_thumbprint == THUMBPRINT
    enrollment = real.enrollments.get_individual(DEVICE)
    assert enrollment.provisioning_status is ProvisioningStatus.ENABLED
    assert enrollment.primary is not None


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def payload_of(jwt_text: str) -> dict[str, Any]:
    part = jwt_text.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("kw", "app"),
    [
        ({}, False),
        ({"version": "1.0"}, False),
        ({"app": True}, True),
        ({"app": True, "version": "1.0"}, True),
    ],
    ids=["delegated-v2", "delegated-v1", "app-only-v2", "app-only-v1"],
)
def test_a_valid_token_disallows(real: Services, kw: dict[str, Any], app: bool) -> None:
    resp = disallow(token=token("erin@example.com", **kw))
    assert resp.status_code == 200, resp.get_body()
    record = real.state.get(DEVICE)
    assert record is not None
    assert record.disallowed_by is not None
    assert record.disallowed_by.startswith(f"oid:{oid_of('erin@example.com')}")
    assert (" app:" in record.disallowed_by) is app
    if not app:  # a user's display name; v2 app-only tokens carry none
        assert record.disallowed_by.endswith("(erin@example.com)")
    assert real.registry.get_device(DEVICE).status is DeviceStatus.DISABLED


def test_clock_skew_within_a_minute_is_tolerated(real: Services) -> None:
    now = int(time.time())
    resp = disallow(token=token(claims={"exp": now - 30, "nbf": now + 30, "iat": now - 600}))
    assert resp.status_code == 200, resp.get_body()


# --------------------------------------------------------------------------- refused


def _expired() -> str:
    now = int(time.time())
    return token(claims={"iat": now - 7200, "nbf": now - 7200, "exp": now - 120})


def _not_yet_valid() -> str:
    now = int(time.time())
    return token(claims={"nbf": now + 600, "iat": now, "exp": now + 3600})


def _other_audience() -> str:
    return token(claims={"aud": "api://00000000-0000-0000-0000-0000000000aa"})


def _other_issuer() -> str:
    return token(claims={"iss": f"https://issuer.example/{issuer().tenant_id}/v2.0"})


def _other_tenant() -> str:
    return token(
        claims={
            "iss": f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0",
            "tid": OTHER_TENANT,
        }
    )


def _other_tenant_claim() -> str:
    return token(claims={"tid": OTHER_TENANT})


def _alg_none() -> str:
    good = payload_of(token())
    return unsigned({"alg": "none", "typ": "JWT", "kid": issuer().kid}, good) + "."


def _hs256_with_public_key() -> str:
    public_pem = (
        issuer()
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = unsigned(
        {"alg": "HS256", "typ": "JWT", "kid": issuer().kid}, payload_of(token())
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _unknown_kid() -> str:
    return token(headers={"kid": "not-a-published-kid"})


def _no_kid() -> str:
    return token(headers={"kid": None})


def _tampered_payload() -> str:
    head, _, signature = token(roles=()).split(".")
    claims = payload_of(token(roles=()))
    claims["roles"] = [OPERATOR_ROLE]
    return f"{head}.{b64(json.dumps(claims).encode())}.{signature}"


def _unpublished_key() -> str:
    # the tenant's kid in the header, but signed with a key the tenant never published
    return token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _oversized() -> str:
    return token(claims={"padding": "x" * 20_000})


def _id_token() -> str:
    # an ID token has no azp/appid: it is not an access token for this API
    return token(claims={"azp": None, "scp": None, "nonce": "n-0S6_WzA2Mj"})


def _missing_exp() -> str:
    return token(claims={"exp": None})


REFUSED_TOKENS: list[Any] = [
    pytest.param(_expired, "token_expired", id="expired"),
    pytest.param(_not_yet_valid, "token_not_yet_valid", id="not-yet-valid"),
    pytest.param(_other_audience, "token_audience", id="other-audience"),
    pytest.param(_other_issuer, "token_issuer", id="other-issuer"),
    pytest.param(_other_tenant, "token_issuer", id="other-tenant"),
    pytest.param(_other_tenant_claim, "token_tenant", id="other-tenant-tid"),
    pytest.param(_alg_none, "token_algorithm", id="alg-none"),
    pytest.param(_hs256_with_public_key, "token_algorithm", id="hs256-public-key"),
    pytest.param(_unknown_kid, "token_key_unknown", id="unknown-kid"),
    pytest.param(_no_kid, "token_malformed", id="no-kid"),
    pytest.param(_tampered_payload, "token_signature", id="tampered-payload"),
    pytest.param(_unpublished_key, "token_signature", id="unpublished-key"),
    pytest.param(_oversized, "token_too_large", id="oversized"),
    pytest.param(_id_token, "token_claims", id="id-token"),
    pytest.param(_missing_exp, "token_claims", id="no-exp"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED_TOKENS)
def test_a_bad_token_is_401_audited_and_changes_nothing(
    real: Services, make: Callable[[], str], reason: str
) -> None:
    bad = make()
    resp = disallow(token=bad)
    assert_refused(real, resp, 401, "unauthenticated", secret=bad)
    entry = real.audit.list()[0]
    assert entry.actor == "anonymous"
    assert entry.detail["reason"] == reason
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_a_token_without_the_role_is_403_audited_and_changes_nothing(real: Services) -> None:
    reader = token("reader@example.com", roles=("Certroll.Reader",))
    resp = disallow(token=reader)
    assert_refused(real, resp, 403, "forbidden", secret=reader)
    entry = real.audit.list()[0]
    assert entry.actor == actor_of("reader@example.com")
    assert entry.detail["caller"]["oid"] == oid_of("reader@example.com")


# --------------------------------------------------------------------------- forged principal


def forged_principal(name: str = "mallory@example.com", oid: str | None = None) -> str:
    claims = [
        {"typ": "roles", "val": OPERATOR_ROLE},
        {"typ": "name", "val": name},
        {
            "typ": "http://schemas.microsoft.com/identity/claims/objectidentifier",
            "val": oid or oid_of(name),
        },
    ]
    doc = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_a_forged_principal_header_alone_is_401(real: Services) -> None:
    resp = disallow(principal=forged_principal(), principal_name="mallory@example.com")
    assert_refused(real, resp, 401, "unauthenticated")
    assert real.audit.list()[0].detail["reason"] == "token_missing"


def test_a_forged_principal_header_does_not_add_the_role(real: Services) -> None:
    reader = token("mallory@example.com", roles=())
    resp = disallow(token=reader, principal=forged_principal())
    assert_refused(real, resp, 403, "forbidden", secret=reader)


@pytest.fixture
def platform_enforced() -> Iterator[Services]:
    services = make_services(CERTROLL_PLATFORM_AUTH_ENFORCED="true")
    with override_services(services):
        yield services


def test_where_the_platform_enforces_auth_its_principal_must_match_the_token(
    platform_enforced: Services,
) -> None:
    good = token("erin@example.com")
    resp = disallow(token=good, principal=forged_principal("mallory@example.com"))
    assert_refused(platform_enforced, resp, 401, "unauthenticated", secret=good)
    assert platform_enforced.audit.list()[0].detail["reason"] == "principal_mismatch"


def test_where_the_platform_enforces_auth_its_principal_is_required(
    platform_enforced: Services,
) -> None:
    resp = disallow(token=token("erin@example.com"))
    assert_refused(platform_enforced, resp, 401, "unauthenticated")
    assert platform_enforced.audit.list()[0].detail["reason"] == "principal_missing"


def test_where_the_platform_enforces_auth_a_matching_principal_passes(
    platform_enforced: Services,
) -> None:
    # the principal names the token's object; its roles add nothing (the token's count)
    resp = disallow(token=token("erin@example.com"), principal=forged_principal("erin@example.com"))
    assert resp.status_code == 200, resp.get_body()
    refused = disallow(
        token=token("erin@example.com", roles=()), principal=forged_principal("erin@example.com")
    )
    assert refused.status_code == 403


# --------------------------------------------------------------------------- unavailable keys


def test_unreadable_signing_keys_are_503_and_change_nothing() -> None:
    services = make_services(
        CERTROLL_AUTH_METADATA_URL="http://127.0.0.1:9/nowhere/.well-known/openid-configuration"
    )
    with override_services(services):
        resp = disallow(token=token())
        assert_refused(services, resp, 503, "auth_unavailable")
    assert resp.headers["Retry-After"] == "30"


def test_unconfigured_authentication_refuses_everyone() -> None:
    services = make_services(CERTROLL_AUTH_TENANT_ID="", CERTROLL_AUTH_AUDIENCES="")
    with override_services(services):
        resp = disallow(token=token())
        assert_refused(services, resp, 503, "auth_unavailable")
    assert services.audit.list()[0].detail["reason"] == "auth_not_configured"


def test_another_issuer_home_is_refused(tmp_path: Any, real: Services) -> None:
    stranger = LocalTokenIssuer(tmp_path)  # its own tenant, client id and key
    resp = disallow(token=stranger.mint("erin@example.com", (OPERATOR_ROLE,)))
    assert_refused(real, resp, 401, "unauthenticated")
