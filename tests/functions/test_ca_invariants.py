"""The CA's invariants end to end (issue 17): a key or certificate once retired never
comes back, whatever the path: the HTTP API (``devices_api``) and the twin path
(``twin_changes``) over the real rotation service, memory stores and the fleet emulator.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest
from cryptography import x509

from shared.bootstrap import Services
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
from tests.functions.fakes import user_function
from tests.functions.test_api_real_service import call, real  # noqa: F401 (fixture)
from tests.support.pki import DeviceKey, make_csr, make_device_key

DEVICE = "dev-7"


@dataclass
class Device:
    key: DeviceKey
    csr: bytes
    cert: CertificateRecord


@pytest.fixture
def device(real: Services) -> Device:  # noqa: F811
    """DEVICE runs on a certroll certificate: in its enrollment, its hub identity, and
    reported on its twin (so it is the rotation record's current certificate)."""
    key = make_device_key()
    csr = make_csr(DEVICE, key)
    issued = real.issuer.issue(
        DEVICE, csr, request_id="first", trigger=Trigger.MANUAL.value, actor="test"
    )
    cert = issued.record
    real.enrollments.put_individual(
        IndividualEnrollment(DEVICE, DEVICE, primary=CertificateSlot(pem=cert.pem))
    )
    real.registry.create_device(
        DeviceIdentity(
            DEVICE, auth_type=AuthType.SELF_SIGNED, primary_thumbprint=cert.thumbprint_sha256
        )
    )
    twin_report({"x509": certificate_report(cert)})
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.current_serial == cert.serial
    return Device(key, csr, cert)


def certificate_report(cert: CertificateRecord) -> dict[str, Any]:
    leaf = x509.load_pem_x509_certificate(cert.pem.encode())
    return {
        "thumbprint": cert.thumbprint_sha256,
        "serialNumber": cert.serial,
        "notBefore": leaf.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notAfter": leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def twin_report(reported: dict[str, Any]) -> None:
    """One routed TwinChangeEvents message through ``twin_changes``."""
    event = func.EventHubEvent(
        body=json.dumps({"version": 3, "properties": {"reported": reported}}).encode(),
        sequence_number=1,
        iothub_metadata={"connection-device-id": DEVICE, "message-source": "twinChangeEvents"},
    )
    user_function("twin_changes")([event])


def answer(request_id: str, csr: bytes) -> None:
    twin_report({"x509": {"csr": {"requestId": request_id, "pem": csr.decode()}}})


def certificates(real: Services) -> dict[str, CertificateRecord]:  # noqa: F811
    return {c.serial: c for c in real.ledger.list_for_device(DEVICE)}


def enrolled_thumbprints(real: Services) -> set[str]:  # noqa: F811
    enr = real.enrollments.get_individual(DEVICE)
    return {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None} - {None}


def hub_thumbprints(real: Services) -> set[str]:  # noqa: F811
    ident = real.registry.get_device(DEVICE)
    return {ident.primary_thumbprint, ident.secondary_thumbprint} - {None}


def open_request(real: Services) -> str:  # noqa: F811
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.CSR_REQUESTED, rec
    assert rec.request_id is not None
    return rec.request_id


# --------------------------------------------------------------------------- 1: re-admission


def disallow_and_allow_without_csr(real: Services) -> str:  # noqa: F811
    resp = call("POST", DEVICE, "disallow", body={"reason": "reported stolen"})
    assert resp.status_code == 200, resp.get_body()
    resp = call("POST", DEVICE, "allow")
    assert resp.status_code == 202, resp.get_body()
    return open_request(real)


@pytest.mark.parametrize("same_csr", [True, False], ids=["original-csr", "new-csr-old-key"])
def test_readmission_on_the_twin_path_never_takes_the_revoked_key_back(
    real: Services,  # noqa: F811
    device: Device,
    same_csr: bool,
) -> None:
    request_id = disallow_and_allow_without_csr(real)
    csr = device.csr if same_csr else make_csr(DEVICE, device.key)

    answer(request_id, csr)

    # nothing issued, nothing enrolled or enabled: the revoked key stays out
    assert set(certificates(real)) == {device.cert.serial}
    assert real.ledger.get(device.cert.serial).status is CertificateStatus.REVOKED
    assert real.enrollments.get_individual(DEVICE).provisioning_status is (
        ProvisioningStatus.DISABLED
    )
    assert real.registry.get_device(DEVICE).status is DeviceStatus.DISABLED
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED  # a failed allow: allow again with a new CSR
    assert "key_reused" in (rec.disallowed_reason or "")
    rejected = [e for e in real.audit.list(DEVICE) if e.action == "issue_rejected"]
    assert [e.detail["code"] for e in rejected] == ["key_reused"]

    # a new key lets it back in, holding the new certificate alone
    resp = call("POST", DEVICE, "allow", body={"csr": make_csr(DEVICE).decode()})
    assert resp.status_code == 202, resp.get_body()
    [new] = [c for c in certificates(real).values() if c.serial != device.cert.serial]
    assert enrolled_thumbprints(real) == {new.thumbprint_sha256}
    assert hub_thumbprints(real) == {new.thumbprint_sha256}


# --------------------------------------------------------------------------- 3: compromise


@pytest.mark.parametrize("same_csr", [True, False], ids=["original-csr", "new-csr-old-key"])
def test_a_compromise_renewal_finishes_only_with_a_new_key(
    real: Services,  # noqa: F811
    device: Device,
    same_csr: bool,
) -> None:
    resp = call("POST", DEVICE, "renew", body={"reason": "compromise"})
    assert resp.status_code == 202, resp.get_body()
    request_id = open_request(real)
    csr = device.csr if same_csr else make_csr(DEVICE, device.key)

    answer(request_id, csr)

    assert set(certificates(real)) == {device.cert.serial}  # nothing issued for the old key
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.FAILED
    assert (rec.last_error or "").startswith("key_reused")
    assert rec.current_serial == device.cert.serial
    # the slots are as they were: the device keeps its connection for a proper answer
    assert enrolled_thumbprints(real) == {device.cert.thumbprint_sha256}
    assert hub_thumbprints(real) == {device.cert.thumbprint_sha256}

    # the retried compromise renewal with a new key completes and revokes the old one
    resp = call("POST", DEVICE, "renew", body={"reason": "compromise"})
    assert resp.status_code == 202, resp.get_body()
    new_key = make_device_key()
    answer(open_request(real), make_csr(DEVICE, new_key))
    [new] = [c for c in certificates(real).values() if c.serial != device.cert.serial]
    leaf = x509.load_pem_x509_certificate(new.pem.encode())
    assert leaf.public_key() == new_key.public_key()
    twin_report({"x509": certificate_report(new)})
    assert real.ledger.get(device.cert.serial).status is CertificateStatus.REVOKED
    assert real.ledger.get(new.serial).status is CertificateStatus.ACTIVE


@pytest.mark.parametrize("reason", ["compromise", "ca-roll", "manual", "expiring"])
def test_no_renewal_reason_certifies_a_key_a_revoked_certificate_held(
    real: Services,  # noqa: F811
    device: Device,
    reason: str,
) -> None:
    """The key of a revoked certificate of another device is refused as well."""
    other = make_device_key()
    stolen = real.issuer.issue(
        "dev-other", make_csr("dev-other", other), request_id="x", trigger="manual", actor="t"
    )
    real.issuer.revoke(stolen.record.serial, "keyCompromise", "t")
    resp = call("POST", DEVICE, "renew", body={"reason": reason})
    assert resp.status_code == 202, resp.get_body()
    answer(open_request(real), make_csr(DEVICE, other))
    assert set(certificates(real)) == {device.cert.serial}
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert (rec.last_error or "").startswith("key_reused")


# --------------------------------------------------------------------------- 5: failed rotation


def delivered_rotation(real: Services) -> CertificateRecord:  # noqa: F811
    resp = call("POST", DEVICE, "renew")
    assert resp.status_code == 202, resp.get_body()
    answer(open_request(real), make_csr(DEVICE))
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.new_serial is not None
    assert rec.state in {RotationState.DELIVERED, RotationState.REPROVISION_SENT}
    new = real.ledger.get(rec.new_serial)
    assert new.thumbprint_sha256 in enrolled_thumbprints(real)
    # certroll leaves the self-signed hub identity to DPS (docs/rotation.md): the
    # device's registration with the new certificate makes it the identity's only one
    assert new.thumbprint_sha256 not in hub_thumbprints(real)
    identity = real.registry.get_device(DEVICE)
    real.registry.update_device(
        dataclasses.replace(
            identity, primary_thumbprint=new.thumbprint_sha256, secondary_thumbprint=None
        )
    )
    assert hub_thumbprints(real) == {new.thumbprint_sha256}
    return new


@pytest.mark.parametrize(
    ("code", "status_name"),
    [
        ("key_mismatch", "revoked"),
        ("chain_untrusted", "failed"),  # a status of its own, never admitted again
    ],
)
def test_a_failed_rotation_withdraws_its_certificate(
    real: Services,  # noqa: F811
    device: Device,
    code: str,
    status_name: str,
) -> None:
    status = CertificateStatus(status_name)
    new = delivered_rotation(real)
    request_id = real.state.get(DEVICE).request_id  # type: ignore[union-attr]

    twin_report(
        {"x509": {"renewal": {"requestId": request_id, "status": "failed", "errorCode": code}}}
    )

    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.FAILED
    assert real.ledger.get(new.serial).status is status
    assert enrolled_thumbprints(real) == {device.cert.thumbprint_sha256}
    assert hub_thumbprints(real) == {device.cert.thumbprint_sha256}
    revoked = {r.serial for r in real.ledger.list_revoked()}
    assert (new.serial in revoked) is (status is CertificateStatus.REVOKED)

    # not re-admittable: a report of it is not adopted, and the record keeps the old one
    twin_report({"x509": certificate_report(new)})
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.current_serial == device.cert.serial
    assert real.ledger.get(new.serial).status is status
    assert new.thumbprint_sha256 not in enrolled_thumbprints(real) | hub_thumbprints(real)


# --------------------------------------------------------------------------- superseded


def test_a_superseded_certificate_is_never_taken_back_as_current(
    real: Services,  # noqa: F811
    device: Device,
) -> None:
    new = delivered_rotation(real)
    twin_report({"x509": certificate_report(new)})  # installed: the rotation finishes
    assert real.ledger.get(device.cert.serial).status is CertificateStatus.SUPERSEDED
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.IDLE
    # a record that knows no current certificate (as after a lost record) and a report of
    # the superseded one: it is not adopted
    real.state.put(dataclasses.replace(rec, current_serial=None, current_thumbprint=None))
    twin_report({"x509": certificate_report(device.cert)})
    after = real.state.get(DEVICE)
    assert after is not None
    assert after.current_serial is None
    assert real.ledger.get(device.cert.serial).status is CertificateStatus.SUPERSEDED
    assert enrolled_thumbprints(real) == {new.thumbprint_sha256}
    assert hub_thumbprints(real) == {new.thumbprint_sha256}


def test_a_failed_compromise_renewal_leaves_the_device_as_it_was(
    real: Services,  # noqa: F811
    device: Device,
) -> None:
    """The compromise renewal emptied the old DPS slot at once; failing it puts the
    current certificate back instead of leaving DPS with the withdrawn one."""
    resp = call("POST", DEVICE, "renew", body={"reason": "compromise"})
    assert resp.status_code == 202, resp.get_body()
    request_id = open_request(real)
    answer(request_id, make_csr(DEVICE))
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.new_serial is not None
    new = real.ledger.get(rec.new_serial)
    assert enrolled_thumbprints(real) == {new.thumbprint_sha256}
    twin_report(
        {
            "x509": {
                "renewal": {
                    "requestId": request_id,
                    "status": "failed",
                    "errorCode": "connect_failed",
                }
            }
        }
    )
    assert real.ledger.get(new.serial).status is CertificateStatus.FAILED
    enr = real.enrollments.get_individual(DEVICE)
    assert enr.provisioning_status is ProvisioningStatus.ENABLED
    assert enrolled_thumbprints(real) == {device.cert.thumbprint_sha256}
    assert hub_thumbprints(real) == {device.cert.thumbprint_sha256}


def test_a_failed_allow_disables_again_what_it_enabled(
    real: Services,  # noqa: F811
    device: Device,
) -> None:
    resp = call("POST", DEVICE, "disallow", body={"reason": "lost"})
    assert resp.status_code == 200, resp.get_body()
    resp = call("POST", DEVICE, "allow", body={"csr": make_csr(DEVICE).decode()})
    assert resp.status_code == 202, resp.get_body()
    rec = real.state.get(DEVICE)
    assert rec is not None
    assert rec.new_serial is not None
    assert real.registry.get_device(DEVICE).status is DeviceStatus.ENABLED
    twin_report(
        {
            "x509": {
                "renewal": {
                    "requestId": rec.request_id,
                    "status": "failed",
                    "errorCode": "key_mismatch",
                }
            }
        }
    )
    after = real.state.get(DEVICE)
    assert after is not None
    assert after.state is RotationState.DISALLOWED
    assert real.ledger.get(rec.new_serial).status is CertificateStatus.REVOKED
    assert real.enrollments.get_individual(DEVICE).provisioning_status is (
        ProvisioningStatus.DISABLED
    )
    assert real.registry.get_device(DEVICE).status is DeviceStatus.DISABLED
