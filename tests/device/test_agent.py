from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from local.device import contract
from local.device.agent import DeviceAgent
from local.emulator import CONNECTIONS, FleetEmulator, HubConnectError
from shared.clock import ManualClock
from shared.domain.model import DeviceIdentity
from tests.device.conftest import other_key
from tests.device.pki import TestPki, chain_pem
from tests.device.service import ServiceDouble


def spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


# --------------------------------------------------------------------------- start


def test_start_registers_connects_and_reports_its_certificate(
    agent: DeviceAgent, emulator: FleetEmulator, service: ServiceDouble
) -> None:
    cert = agent.certificate
    reported = service.reported_x509("dev-1")
    assert reported == {
        "thumbprint": cert.fingerprint(hashes.SHA256()).hex(),
        "serialNumber": format(cert.serial_number, "x"),
        "notBefore": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notAfter": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert agent.connected
    identity = emulator.hub.get_device("dev-1")
    assert identity.primary_thumbprint == reported["thumbprint"]
    assert emulator.dps.get_registration_state("dev-1").status == "assigned"
    assert agent.timeline.registrations == 1
    assert agent.timeline.first_connected_at == emulator.clock.now()


def test_agent_refuses_a_certificate_whose_cn_is_not_its_id(
    emulator: FleetEmulator, pki: TestPki
) -> None:
    key = other_key()
    leaf = pki.leaf("someone-else", key.public_key(), emulator.clock.now())
    with pytest.raises(ValueError, match="CN"):
        DeviceAgent("dev-1", emulator, key, [leaf, pki.issuing], pki.root)


# --------------------------------------------------------------------------- CSR


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size"),
    [
        ("ec-p256", ec.EllipticCurvePublicKey, 256),
        ("ec-p384", ec.EllipticCurvePublicKey, 384),
        ("rsa-2048", rsa.RSAPublicKey, 2048),
    ],
)
def test_renewal_request_is_answered_with_a_csr_from_a_fresh_key(
    agent: DeviceAgent, service: ServiceDouble, algorithm: str, key_type: type, size: int
) -> None:
    old_spki = agent.public_key_der()
    service.ask_renewal("dev-1", "req-1", algorithm)
    assert service.reported_x509("dev-1").get("csr") is None  # nothing before the step
    agent.step()

    csr = x509.load_pem_x509_csr(service.csr_pem("dev-1", "req-1").encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=dev-1"
    public_key = csr.public_key()
    assert isinstance(public_key, key_type)
    assert public_key.key_size == size
    assert spki(public_key) != old_spki
    assert agent.public_key_der() == old_spki  # old key kept until the new one works
    assert agent.pending_request_id == "req-1"
    twin_text = json.dumps(service.emulator.hub.get_twin("dev-1").reported)
    assert "PRIVATE KEY" not in twin_text


def test_repeated_or_coalesced_renewal_requests_make_one_key(
    agent: DeviceAgent, service: ServiceDouble
) -> None:
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    first = service.csr_pem("dev-1", "req-1")
    service.ask_renewal("dev-1", "req-1")  # same request again (retry by the service)
    agent.step()
    assert service.csr_pem("dev-1", "req-1") == first
    assert agent.timeline.csrs_made == 1
    service.ask_renewal("dev-1", "req-2")  # a newer request replaces the older one
    agent.step()
    assert service.csr_pem("dev-1", "req-2") != first
    assert agent.timeline.csrs_made == 2


def test_unsupported_key_algorithm_is_reported_failed_without_a_csr(
    agent: DeviceAgent, service: ServiceDouble
) -> None:
    service.ask_renewal("dev-1", "req-1", "dsa-1024")
    agent.step()
    reported = service.reported_x509("dev-1")
    assert "csr" not in reported
    assert reported["renewal"]["requestId"] == "req-1"
    assert reported["renewal"]["status"] == "failed"
    assert reported["renewal"]["errorCode"] == "key_algorithm_unsupported"
    assert "dsa-1024" in reported["renewal"]["error"]


def test_slow_device_answers_after_its_delay(
    new_agent: Callable[..., DeviceAgent], service: ServiceDouble, clock: ManualClock
) -> None:
    agent = new_agent(answer_delay=timedelta(minutes=10))
    agent.start()
    service.ask_renewal("dev-1", "req-1")
    due = agent.step()
    assert due == clock.now() + timedelta(minutes=10)
    assert "csr" not in service.reported_x509("dev-1")
    clock.advance(599)
    agent.step()
    assert "csr" not in service.reported_x509("dev-1")
    clock.advance(1)
    assert agent.step() is None
    assert service.csr_pem("dev-1", "req-1")


def test_offline_device_reads_its_desired_twin_when_it_comes_back(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    agent.go_offline()
    assert not agent.connected
    assert emulator.hub.get_device("dev-1").connection_state == "Disconnected"
    service.ask_renewal("dev-1", "req-1")
    agent.step()  # offline: does nothing
    assert "csr" not in service.reported_x509("dev-1")
    emulator.clock.sleep(3600)
    agent.go_online()
    agent.step()
    assert agent.connected
    assert service.csr_pem("dev-1", "req-1")
    assert agent.timeline.offline_seconds == 3600
    assert agent.timeline.max_gap_seconds == 0  # deliberate offline time is not a gap


# --------------------------------------------------------------------------- deliveries refused


def _refusal_cases() -> list[Any]:
    def wrong_key(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        now = s.emulator.clock.now()
        leaf = s.pki.leaf("dev-1", other_key().public_key(), now)
        return chain_pem([leaf, s.pki.issuing]), None

    def untrusted(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        now = s.emulator.clock.now()
        stranger = TestPki.create(now, "Stranger")
        csr = x509.load_pem_x509_csr(s.csr_pem("dev-1", "req-1").encode())
        leaf = stranger.leaf("dev-1", csr.public_key(), now)  # type: ignore[arg-type]
        return chain_pem([leaf, stranger.issuing]), None

    def wrong_cn(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        now = s.emulator.clock.now()
        csr = x509.load_pem_x509_csr(s.csr_pem("dev-1", "req-1").encode())
        leaf = s.pki.leaf("dev-2", csr.public_key(), now)  # type: ignore[arg-type]
        return chain_pem([leaf, s.pki.issuing]), None

    def expired(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        now = s.emulator.clock.now()
        csr = x509.load_pem_x509_csr(s.csr_pem("dev-1", "req-1").encode())
        leaf = s.pki.leaf(
            "dev-1", csr.public_key(), now, days=1, not_before=now - timedelta(days=2)
        )  # type: ignore[arg-type]
        return chain_pem([leaf, s.pki.issuing]), None

    def ca_cert(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        now = s.emulator.clock.now()
        csr = x509.load_pem_x509_csr(s.csr_pem("dev-1", "req-1").encode())
        leaf = s.pki.leaf("dev-1", csr.public_key(), now, ca=True)  # type: ignore[arg-type]
        return chain_pem([leaf, s.pki.issuing]), None

    def not_after_disagrees(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        _, pem = s.sign("dev-1", "req-1")
        return pem, "2099-01-01T00:00:00Z"

    def garbage_pem(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        return "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", (
            "2026-04-01T00:00:00Z"
        )

    def missing_intermediate(s: ServiceDouble, agent: DeviceAgent) -> tuple[str, str | None]:
        leaf, _ = s.sign("dev-1", "req-1")
        return chain_pem([leaf]), None  # the root alone cannot verify a leaf of the issuing CA

    return [
        pytest.param(wrong_key, "key_mismatch", id="wrong-key"),
        pytest.param(untrusted, "chain_untrusted", id="untrusted-chain"),
        pytest.param(wrong_cn, "subject_mismatch", id="wrong-cn"),
        pytest.param(expired, "certificate_not_valid_now", id="expired"),
        pytest.param(ca_cert, "not_a_leaf", id="ca-certificate"),
        pytest.param(not_after_disagrees, "certificate_malformed", id="notafter-disagrees"),
        pytest.param(garbage_pem, "certificate_malformed", id="garbage-pem"),
        pytest.param(missing_intermediate, "chain_untrusted", id="missing-intermediate"),
    ]


@pytest.mark.parametrize(("make_delivery", "code"), _refusal_cases())
def test_bad_delivery_is_refused_and_changes_nothing(
    agent: DeviceAgent,
    service: ServiceDouble,
    emulator: FleetEmulator,
    make_delivery: Callable[[ServiceDouble, DeviceAgent], tuple[str, str | None]],
    code: str,
) -> None:
    old_cert = agent.certificate
    old_reported = service.reported_x509("dev-1")
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    pem, not_after = make_delivery(service, agent)
    if not_after is None:
        service.deliver("dev-1", "req-1", pem)
    else:
        service.emulator.hub.patch_desired(
            "dev-1",
            {"x509": {"issued": {"requestId": "req-1", "certificate": pem, "notAfter": not_after}}},
        )
    agent.step()
    reported = service.reported_x509("dev-1")
    assert reported["renewal"]["status"] == "failed"
    assert reported["renewal"]["errorCode"] == code
    assert reported["renewal"]["requestId"] == "req-1"
    assert reported["thumbprint"] == old_reported["thumbprint"]
    assert agent.certificate == old_cert
    assert agent.staged_request_id is None
    # a reprovision now only re-registers the old certificate
    assert service.reprovision("dev-1", "req-1").status == 200
    agent.step()
    assert agent.certificate == old_cert
    assert agent.connected
    assert emulator.hub.get_device("dev-1").primary_thumbprint == old_reported["thumbprint"]


def test_delivery_for_an_unknown_request_is_refused(
    agent: DeviceAgent, service: ServiceDouble
) -> None:
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    _, pem = service.sign("dev-1", "req-1")
    service.deliver("dev-1", "req-9", pem)
    agent.step()
    renewal = service.reported_x509("dev-1")["renewal"]
    assert (renewal["requestId"], renewal["errorCode"]) == ("req-9", "request_unknown")
    # the right request can still be delivered afterwards
    service.deliver("dev-1", "req-1", pem)
    agent.step()
    assert agent.staged_request_id == "req-1"


def test_corrected_redelivery_after_a_refusal_is_accepted(
    agent: DeviceAgent, service: ServiceDouble
) -> None:
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    leaf = service.pki.leaf("dev-1", other_key().public_key(), service.emulator.clock.now())
    service.deliver("dev-1", "req-1", chain_pem([leaf, service.pki.issuing]))
    agent.step()
    assert service.reported_x509("dev-1")["renewal"]["errorCode"] == "key_mismatch"
    good, pem = service.sign("dev-1", "req-1")
    service.put_in_free_slot("dev-1", good)
    service.deliver("dev-1", "req-1", pem)
    agent.step()
    assert service.reprovision("dev-1", "req-1").status == 200
    agent.step()
    assert agent.certificate == good
    assert service.reported_x509("dev-1")["renewal"]["status"] == "installed"


# --------------------------------------------------------------------------- install


def test_good_certificate_is_installed_on_reprovision(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    old = agent.certificate
    new = service.rotate("dev-1", "req-1", agent.step)

    assert agent.certificate == new
    assert agent.certificate != old
    reported = service.reported_x509("dev-1")
    assert reported["thumbprint"] == contract.thumbprint(new)
    assert reported["serialNumber"] == format(new.serial_number, "x")
    # error/errorCode are sent as null, which removes them from the twin
    assert reported["renewal"] == {"requestId": "req-1", "status": "installed"}
    assert "csr" not in reported  # the answered CSR is removed
    assert emulator.hub.get_device("dev-1").primary_thumbprint == contract.thumbprint(new)
    assert agent.connected
    uses = agent.timeline.certificates
    assert [u.thumbprint for u in uses] == [contract.thumbprint(old), contract.thumbprint(new)]
    assert uses[0].until == uses[1].first_used_at
    assert agent.timeline.max_gap_seconds == 0
    assert agent.timeline.renewals_installed == 1
    assert agent.renewal_outcome("req-1") == "installed"


def test_second_rotation_uses_the_other_slot_and_leaves_desired_stale_safely(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    first = service.rotate("dev-1", "req-1", agent.step)
    second = service.rotate("dev-1", "req-2", agent.step)
    assert agent.certificate == second
    enrollment = emulator.dps.get_individual("dev-1")
    assert enrollment.secondary is not None
    assert enrollment.primary is not None
    assert {enrollment.primary.thumbprint_sha256, enrollment.secondary.thumbprint_sha256} == {
        contract.thumbprint(first),
        contract.thumbprint(second),
    }
    # the twin still holds the old desired renewal/issued: reconnecting must not redo them
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    agent.step()
    assert agent.connected
    assert agent.timeline.csrs_made == 2
    assert agent.certificate == second


def test_repeated_reprovision_after_install_is_idempotent(
    agent: DeviceAgent, service: ServiceDouble
) -> None:
    new = service.rotate("dev-1", "req-1", agent.step)
    registrations = agent.timeline.registrations
    assert service.reprovision("dev-1", "req-1").status == 200
    agent.step()
    assert agent.certificate == new
    assert agent.timeline.registrations == registrations
    assert service.reported_x509("dev-1")["renewal"]["status"] == "installed"


# --------------------------------------------------------------------------- rollback


def test_rolls_back_when_dps_does_not_accept_the_new_certificate(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    old = agent.certificate
    service.rotate("dev-1", "req-1", agent.step, enroll=False)  # new cert in no slot

    assert agent.certificate == old
    assert agent.connected
    renewal = service.reported_x509("dev-1")["renewal"]
    assert renewal["status"] == "failed"
    assert renewal["errorCode"] == "registration_failed"
    assert "401" in renewal["error"]
    assert service.reported_x509("dev-1")["thumbprint"] == contract.thumbprint(old)
    assert emulator.hub.get_device("dev-1").primary_thumbprint == contract.thumbprint(old)
    assert agent.timeline.renewals_failed == 1
    assert agent.timeline.max_gap_seconds == 0


class RefusingHub:
    """The emulator, except that the hub refuses connections with the given thumbprints."""

    def __init__(self, emulator: FleetEmulator) -> None:
        self.inner = emulator
        self.clock = emulator.clock
        self.dps = emulator.dps
        self.refused: set[str] = set()
        self.throttled: set[str] = set()  # refused once with 429, then let through

    def register(self, registration_id: str, chain: Sequence[x509.Certificate]) -> Any:
        return self.inner.register(registration_id, chain)

    def connect(self, device_id: str, chain: Sequence[x509.Certificate], handler: Any) -> Any:
        thumb = contract.thumbprint(chain[0])
        if thumb in self.refused:
            raise HubConnectError(401003, "IoTHubUnauthorized: refused by the test")
        if thumb in self.throttled:
            self.throttled.discard(thumb)
            raise HubConnectError(429001, "throttled by the test", retry_after=5.0)
        return self.inner.connect(device_id, chain, handler)


def renew_against(
    emulator: FleetEmulator, pki: TestPki, service: ServiceDouble, answer: str
) -> tuple[DeviceAgent, x509.Certificate, x509.Certificate]:
    """A device renews once against a hub that gives the new certificate ``answer``
    (``refused``: 401 every time, ``throttled``: 429 once); (agent, old, new) after the
    device's reprovision step."""
    from tests.device.pki import device_credentials

    hub = RefusingHub(emulator)
    key, chain = device_credentials(pki, "dev-1", emulator.clock.now())
    service.enroll("dev-1", chain[0])
    agent = DeviceAgent("dev-1", hub, key, chain, pki.root)  # type: ignore[arg-type]
    assert agent.start()
    old = agent.certificate

    service.ask_renewal("dev-1", "req-1")
    agent.step()
    new, pem = service.sign("dev-1", "req-1")
    service.put_in_free_slot("dev-1", new)
    getattr(hub, answer).add(contract.thumbprint(new))
    service.deliver("dev-1", "req-1", pem)
    agent.step()
    assert service.reprovision("dev-1", "req-1").status == 200
    agent.step()
    return agent, old, new


def test_a_throttled_connection_with_the_new_certificate_keeps_the_old_one_up(
    emulator: FleetEmulator, pki: TestPki, service: ServiceDouble
) -> None:
    agent, old, new = renew_against(emulator, pki, service, "throttled")

    # the hub said 429 to the new certificate: the old connection never went down
    assert agent.connected
    assert agent.certificate == old
    assert emulator.hub.get_device("dev-1").connection_state == "Connected"
    due = agent.next_due()
    assert due is not None
    emulator.clock.advance((due - emulator.clock.now()).total_seconds())
    agent.step()
    assert agent.certificate == new
    assert agent.connected
    assert agent.timeline.renewals_installed == 1
    assert agent.timeline.max_gap_seconds == 0


def test_a_link_lost_after_dps_took_the_new_certificate_comes_back_with_it(
    emulator: FleetEmulator, pki: TestPki, service: ServiceDouble
) -> None:
    """DPS registered the new certificate (the hub identity names only it now) and the
    hub throttled the connect; then the old link drops. The device reconnects with the
    staged certificate first: the old one would only be refused (401003)."""
    agent, old, new = renew_against(emulator, pki, service, "throttled")
    assert emulator.hub.get_device("dev-1").primary_thumbprint == contract.thumbprint(new)
    registrations = agent.timeline.registrations
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    due = agent.next_due()
    assert due is not None
    emulator.clock.advance((due - emulator.clock.now()).total_seconds())
    agent.step()

    assert agent.connected
    assert agent.certificate == new
    assert agent.timeline.refusals == []
    assert agent.timeline.registrations == registrations  # no reprovision needed
    assert service.reported_x509("dev-1")["renewal"]["status"] == "installed"
    assert old != new


def test_rolls_back_when_the_hub_refuses_the_new_certificate(
    emulator: FleetEmulator, pki: TestPki, service: ServiceDouble
) -> None:
    agent, old, _new = renew_against(emulator, pki, service, "refused")

    # DPS registered the new certificate (hub identity now names it), the hub refused it,
    # the device went back to the old one by registering it again
    assert agent.certificate == old
    assert agent.connected
    renewal = service.reported_x509("dev-1")["renewal"]
    assert (renewal["status"], renewal["errorCode"]) == ("failed", "connect_failed")
    assert emulator.hub.get_device("dev-1").primary_thumbprint == contract.thumbprint(old)
    assert agent.timeline.registrations == 3  # first boot, new cert, old cert again


# --------------------------------------------------------------------------- 401


def test_self_reprovisions_on_401_at_reconnect(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    emulator.events.drain(CONNECTIONS)
    thumb = contract.thumbprint(agent.certificate)
    # the hub identity stops naming the device's certificate, and the link drops
    emulator.hub.update_device(DeviceIdentity("dev-1", primary_thumbprint="ab" * 32))
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    emulator.clock.sleep(5)
    agent.step()

    assert agent.connected
    assert agent.timeline.self_reprovisions == 1
    assert agent.timeline.last_connect_failure == 401003
    assert emulator.hub.get_device("dev-1").primary_thumbprint == thumb
    records = emulator.events.drain(CONNECTIONS)
    assert [r["records"][0]["resultType"] for r in records] == ["401003"]
    # the drop is noticed at the step, which also reconnects: no gap on the device's clock
    assert agent.timeline.max_gap_seconds == 0
    assert agent.timeline.registrations == 2


def test_self_reprovision_prefers_the_staged_certificate(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    new, pem = service.sign("dev-1", "req-1")
    service.put_in_free_slot("dev-1", new)
    service.deliver("dev-1", "req-1", pem)
    agent.step()
    assert agent.staged_request_id == "req-1"
    # no reprovision call arrives; the hub only knows the new certificate now
    emulator.hub.update_device(DeviceIdentity("dev-1", primary_thumbprint=contract.thumbprint(new)))
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    agent.step()
    assert agent.certificate == new
    assert agent.connected
    assert service.reported_x509("dev-1")["renewal"]["status"] == "installed"


def test_self_reprovision_falls_back_to_the_old_certificate(
    agent: DeviceAgent, service: ServiceDouble, emulator: FleetEmulator
) -> None:
    old = agent.certificate
    service.ask_renewal("dev-1", "req-1")
    agent.step()
    _, pem = service.sign("dev-1", "req-1")
    service.deliver("dev-1", "req-1", pem)  # staged, but never enrolled in DPS
    agent.step()
    emulator.hub.update_device(DeviceIdentity("dev-1", primary_thumbprint="cd" * 32))
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    agent.step()
    assert agent.certificate == old
    assert agent.connected
    assert agent.staged_request_id == "req-1"  # still staged for a later reprovision


def test_unreachable_device_retries_with_backoff(
    agent: DeviceAgent, emulator: FleetEmulator, clock: ManualClock
) -> None:
    emulator.hub.update_device(DeviceIdentity("dev-1", primary_thumbprint="ab" * 32))
    emulator.dps.delete_individual("dev-1")  # DPS will not take it back either
    emulator.session("dev-1").disconnect()  # type: ignore[union-attr]
    first_due = agent.step()
    assert not agent.connected
    assert first_due is not None
    first_wait = (first_due - clock.now()).total_seconds()
    assert 30 <= first_wait <= 30 * 1.25
    clock.advance(first_wait - 1)
    assert agent.step() == first_due  # not yet: nothing tried
    assert agent.timeline.registrations == 1
    clock.advance(1)
    second_due = agent.step()
    assert second_due is not None
    assert 60 <= (second_due - clock.now()).total_seconds() <= 60 * 1.25
    assert agent.timeline.gap_seconds(clock.now()) == first_wait
    assert not agent.connected


def test_disabled_device_does_not_reprovision(agent: DeviceAgent, emulator: FleetEmulator) -> None:
    identity = emulator.hub.get_device("dev-1")
    identity.status = "disabled"  # type: ignore[assignment]
    emulator.hub.update_device(identity)
    agent.step()
    assert not agent.connected
    assert agent.timeline.last_connect_failure == 403012
    assert agent.timeline.self_reprovisions == 0
    assert agent.timeline.registrations == 1


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (None, "object"),
        ({}, "requestId"),
        ({"requestId": ""}, "requestId"),
        ({"requestId": "has space"}, "requestId"),
        ("req-1", "object"),
    ],
)
def test_malformed_reprovision_is_refused_with_400_and_changes_nothing(
    agent: DeviceAgent, service: ServiceDouble, payload: Any, fragment: str
) -> None:
    result = service.emulator.hub.invoke_method("dev-1", "reprovision", payload)
    assert result.status == 400
    assert result.payload["accepted"] is False
    assert fragment in result.payload["error"]
    agent.step()
    assert agent.timeline.registrations == 1


def test_unknown_method_gets_404(agent: DeviceAgent, service: ServiceDouble) -> None:
    result = service.emulator.hub.invoke_method("dev-1", "reboot", {})
    assert result.status == 404
    assert "reboot" in result.payload["error"]


def test_time_without_a_working_certificate_counts_as_a_gap(
    agent: DeviceAgent, emulator: FleetEmulator
) -> None:
    """The gap measure can see an outage: the device loses its connection and neither the
    hub nor DPS accept its certificate for ten minutes."""
    import dataclasses

    from shared.domain.model import ProvisioningStatus

    assert agent.connected
    enrollment = emulator.dps.get_individual("dev-1")
    emulator.dps.put_individual(
        dataclasses.replace(enrollment, provisioning_status=ProvisioningStatus.DISABLED)
    )
    identity = emulator.hub.get_device("dev-1")
    emulator.hub.update_device(dataclasses.replace(identity, primary_thumbprint="ab" * 32))
    session = emulator.session("dev-1")
    assert session is not None
    session.disconnect()
    agent.step()
    assert not agent.connected
    emulator.clock.sleep(600)
    enrollment = emulator.dps.get_individual("dev-1")
    emulator.dps.put_individual(
        dataclasses.replace(enrollment, provisioning_status=ProvisioningStatus.ENABLED)
    )
    for _ in range(20):  # the device retries with back-off until it gets back in
        due = agent.step()
        if agent.connected:
            break
        assert due is not None
        emulator.clock.sleep(max((due - emulator.clock.now()).total_seconds(), 1))
    assert agent.connected
    assert agent.timeline.max_gap_seconds >= 600
