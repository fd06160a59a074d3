"""devices_api over the real rotation service, memory stores and the fleet emulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509

from local.emulator import FleetEmulator
from shared.adapters.memory import MemoryAuditLog, MemoryRotationStore
from shared.bootstrap import Services, override_services
from shared.clock import ManualClock
from shared.domain.model import (
    AuthType,
    CertificateRecord,
    CertificateSlot,
    CertificateStatus,
    DeviceIdentity,
    DeviceStatus,
    IndividualEnrollment,
    ProvisioningStatus,
    RotationState,
    Trigger,
)
from shared.settings import Settings
from tests.functions.fakes import http_request, user_function
from tests.support.pki import make_csr, make_device_key, make_test_authority
from tests.support.tokens import actor_of, auth_settings, token

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def real() -> Iterator[Services]:
    clock = ManualClock(NOW)
    emulator = FleetEmulator(clock, enforce_limits=False)
    emulator.hub.create_device(
        DeviceIdentity("dev-1", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="ab" * 32)
    )
    services = Services(
        Settings.from_env({"CERTROLL_STORAGE": "memory", **auth_settings()}),
        clock=clock,
        enrollments=emulator.dps,
        registry=emulator.hub,
        authority=make_test_authority(now=NOW),
    )
    services.__dict__["emulator"] = emulator
    with override_services(services):
        yield services


def call(method: str, device_id: str, action: str | None = None, **kw: Any) -> Any:
    kw.setdefault("token", token("erin@example.com"))
    return user_function("devices_api")(http_request(method, device_id, action, **kw))


def test_refused_calls_change_nothing(real: Services) -> None:
    audit: MemoryAuditLog = real.audit  # type: ignore[assignment]
    state: MemoryRotationStore = real.state  # type: ignore[assignment]
    assert (
        call("POST", "dev-1", "disallow", body={"reason": "x"}, token=None).status_code == 401
    )
    assert (
        call(
            "POST", "dev-1", "disallow", body={"reason": "x"}, token=token(roles=())
        ).status_code
        == 403
    )
    assert call("POST", "dev-1", "disallow", body={"reason": ""}).status_code == 400
    assert call("POST", "dev-1", "renew", body=b"{").status_code == 400
    assert list(state.list()) == []
    assert real.registry.get_device("dev-1").status is DeviceStatus.ENABLED
    assert [e.outcome for e in audit.list()] == ["rejected"] * 4
    assert {e.detail["status"] for e in audit.list()} == {400, 401, 403}


def test_unknown_device_is_404(real: Services) -> None:
    resp = call("GET", "nobody")
    assert resp.status_code == 404
    assert json.loads(resp.get_body())["error"]["code"] == "not_found"


def test_disallow_through_the_api(real: Services) -> None:
    resp = call("POST", "dev-1", "disallow", body={"reason": "reported stolen"})
    assert resp.status_code == 200, resp.get_body()
    doc = json.loads(resp.get_body())
    assert doc["deviceId"] == "dev-1"
    assert doc["hubIdentity"] == "disabled"
    record = real.state.get("dev-1")
    assert record is not None
    assert record.state is RotationState.DISALLOWED
    assert record.disallowed_by == actor_of("erin@example.com")
    assert record.disallowed_reason == "reported stolen"
    assert real.registry.get_device("dev-1").status is DeviceStatus.DISABLED
    status = call("GET", "dev-1")
    assert status.status_code == 200
    assert json.loads(status.get_body())["rotation"]["state"] == "disallowed"
    renew = call("POST", "dev-1", "renew")
    assert renew.status_code == 409
    assert json.loads(renew.get_body())["error"]["code"] == "device_disallowed"


# --------------------------------------------------------------------------- allow with a CSR


@dataclass(frozen=True)
class IssuedDevice:
    device_id: str
    old: CertificateRecord


@pytest.fixture
def issued_device(real: Services) -> IssuedDevice:
    """dev-2: a certroll certificate in its DPS individual enrollment and hub identity."""
    device_id = "dev-2"
    issued = real.issuer.issue(
        device_id,
        make_csr(device_id),
        request_id="first",
        trigger=Trigger.MANUAL.value,
        actor="test",
    )
    old = issued.record
    real.enrollments.put_individual(
        IndividualEnrollment(device_id, device_id, primary=CertificateSlot(pem=old.pem))
    )
    real.registry.create_device(
        DeviceIdentity(
            device_id, auth_type=AuthType.SELF_SIGNED, primary_thumbprint=old.thumbprint_sha256
        )
    )
    return IssuedDevice(device_id, old)


def disallow(device_id: str) -> None:
    resp = call("POST", device_id, "disallow", body={"reason": "lost in transit"})
    assert resp.status_code == 200, resp.get_body()


def certificates(real: Services, device_id: str) -> dict[str, CertificateRecord]:
    return {c.serial: c for c in real.ledger.list_for_device(device_id)}


def test_allow_with_a_csr_readmits_the_device_with_only_the_new_certificate(
    real: Services, issued_device: IssuedDevice
) -> None:
    device_id, old = issued_device.device_id, issued_device.old
    disallow(device_id)
    assert real.ledger.get(old.serial).status is CertificateStatus.REVOKED
    new_key = make_device_key()
    csr = make_csr(device_id, new_key).decode()

    resp = call("POST", device_id, "allow", body={"csr": csr})

    assert resp.status_code == 202, resp.get_body()
    doc = json.loads(resp.get_body())
    assert doc["device_id"] == device_id
    assert doc["reason"] == Trigger.ALLOW.value
    assert "csr_pem" not in doc
    record = real.state.get(device_id)
    assert record is not None
    assert record.state in {RotationState.ENROLLED, RotationState.DELIVERED}
    assert doc["state"] == record.state.value
    assert record.disallowed_by is None
    new_serials = set(certificates(real, device_id)) - {old.serial}
    assert len(new_serials) == 1
    new = real.ledger.get(new_serials.pop())
    assert record.new_serial == new.serial
    assert new.status is not CertificateStatus.REVOKED
    leaf = x509.load_pem_x509_certificate(new.pem.encode())
    assert leaf.public_key() == new_key.public_key()
    # enrolled and enabled, holding the new certificate alone
    enrollment = real.enrollments.get_individual(device_id)
    assert enrollment.provisioning_status is ProvisioningStatus.ENABLED
    slots = [s for s in (enrollment.primary, enrollment.secondary) if s is not None]
    assert [s.thumbprint_sha256 for s in slots] == [new.thumbprint_sha256]
    identity = real.registry.get_device(device_id)
    assert identity.status is DeviceStatus.ENABLED
    assert {identity.primary_thumbprint, identity.secondary_thumbprint} - {None} == {
        new.thumbprint_sha256
    }
    # the old certificate stays revoked
    assert real.ledger.get(old.serial).status is CertificateStatus.REVOKED
    assert old.serial in {c.serial for c in real.ledger.list_revoked()}
    assert [(e.action, e.outcome) for e in real.audit.list(device_id) if e.action == "allow"] == [
        ("allow", "ok")
    ]


@pytest.mark.parametrize(
    ("csr", "code"),
    [
        (lambda: make_csr("someone-else"), "subject_mismatch"),
        (lambda: make_csr("dev-2", make_device_key("ec-k256")), "key_not_allowed"),
        (lambda: make_csr("dev-2", make_device_key("rsa-1024")), "key_not_allowed"),
        (
            lambda: make_csr(
                "dev-2", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]
            ),
            "extension_not_allowed",
        ),
        (
            lambda: (
                b"-----BEGIN CERTIFICATE REQUEST-----\nQUJDRA==\n"
                b"-----END CERTIFICATE REQUEST-----\n"
            ),
            "csr_malformed",
        ),
    ],
)
def test_allow_with_a_csr_the_policy_refuses_leaves_the_device_disallowed(
    real: Services, issued_device: IssuedDevice, csr: Callable[[], bytes], code: str
) -> None:
    device_id, old = issued_device.device_id, issued_device.old
    disallow(device_id)
    before = real.state.get(device_id)
    audit_before = len(real.audit.list(device_id))

    resp = call("POST", device_id, "allow", body={"csr": csr().decode()})

    assert resp.status_code == 422, resp.get_body()
    assert json.loads(resp.get_body())["error"]["code"] == code
    after = real.state.get(device_id)
    assert after == before
    assert after is not None
    assert after.state is RotationState.DISALLOWED
    assert after.disallowed_by == actor_of("erin@example.com")
    assert set(certificates(real, device_id)) == {old.serial}
    assert real.ledger.get(old.serial).status is CertificateStatus.REVOKED
    assert real.registry.get_device(device_id).status is DeviceStatus.DISABLED
    enrollment = real.enrollments.get_individual(device_id)
    assert enrollment.provisioning_status is ProvisioningStatus.DISABLED
    new_entries = real.audit.list(device_id)[: len(real.audit.list(device_id)) - audit_before]
    # the issuer, the one place a CSR is checked, audits its refusal; the API its answer
    assert [(e.action, e.outcome, e.detail.get("status")) for e in new_entries] == [
        ("api_allow", "rejected", 422),
        ("issue_rejected", "rejected", None),
    ]
    # the same device is still let back in with a good CSR afterwards
    good = call("POST", device_id, "allow", body={"csr": make_csr(device_id).decode()})
    assert good.status_code == 202, good.get_body()
    assert real.registry.get_device(device_id).status is DeviceStatus.ENABLED


@pytest.mark.parametrize(
    ("make", "code_text"),
    [
        pytest.param(lambda: make_csr("dev-2"), "subject_mismatch", id="other-cn"),
        pytest.param(
            lambda: make_csr("dev-1", make_device_key("rsa-1024")), "key_not_allowed", id="weak"
        ),
        pytest.param(
            lambda: (
                b"-----BEGIN CERTIFICATE REQUEST-----\nQUJDRA==\n"
                b"-----END CERTIFICATE REQUEST-----\n"
            ),
            "csr_malformed",
            id="not-pkcs10",
        ),
    ],
)
def test_cli_allow_with_a_csr_the_policy_refuses_exits_2_and_issues_nothing(
    real: Services,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[], bytes],
    code_text: str,
) -> None:
    """The CLI checks only framing and size; the issuer's policy refusal reaches exit 2."""
    from cli.main import main

    csr_file = tmp_path / "device.csr"
    csr_file.write_bytes(make())
    assert main(["allow", "dev-1", "--csr", str(csr_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rejected: {code_text}: "), err
    assert real.ledger.list_for_device("dev-1") == []
