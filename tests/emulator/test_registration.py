from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from local.emulator import LIFECYCLE, FleetEmulator, RegistrationError
from shared.clock import ManualClock
from shared.domain.errors import NotFoundError
from shared.domain.model import (
    AuthType,
    EnrollmentGroup,
    IndividualEnrollment,
    ProvisioningStatus,
)
from tests.emulator.conftest import T0
from tests.emulator.support import Ca, make_root, self_signed, slot, thumbprint


def _group(emu: FleetEmulator, ca: Ca, gid: str = "fleet") -> None:
    emu.dps.put_group(EnrollmentGroup(gid, primary=slot(ca.cert)))


def test_individual_registration_creates_selfsigned_identity(emu: FleetEmulator) -> None:
    cert = self_signed("dev-1", T0)
    emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    result = emu.register("dev-1", [cert])
    assert result.status == "assigned"
    assert result.assigned_hub == "certroll-hub.azure-devices.net"
    assert result.device_id == "dev-1"
    assert result.substatus == "initialAssignment"
    assert result.enrollment == "individual:dev-1"
    ident = emu.hub.get_device("dev-1")
    assert ident.auth_type is AuthType.SELF_SIGNED
    assert ident.primary_thumbprint == thumbprint(cert)
    assert ident.secondary_thumbprint is None
    state = emu.dps.get_registration_state("dev-1")
    assert state.status == "assigned"
    assert state.assigned_hub == emu.hub_host
    assert state.device_id == "dev-1"
    assert state.last_updated == T0
    assert state.etag == result.etag
    created = emu.events.drain(LIFECYCLE)
    assert [e["eventType"] for e in created] == ["Microsoft.Devices.DeviceCreated"]
    ev = created[0]
    assert ev["subject"] == "devices/dev-1"
    assert ev["data"]["deviceId"] == "dev-1"
    assert ev["data"]["hubName"] == "certroll-hub"
    assert ev["data"]["twin"]["x509Thumbprint"]["primaryThumbprint"] == thumbprint(cert)
    assert set(ev) >= {"id", "topic", "eventTime", "dataVersion"}


def test_thumbprint_alternation_primary_then_secondary(
    emu: FleetEmulator, clock: ManualClock
) -> None:
    old = self_signed("dev-1", T0)
    new = self_signed("dev-1", T0 + timedelta(seconds=1))
    e = emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(old)))
    emu.register("dev-1", [old])
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [new])
    assert err.value.status == 401
    assert err.value.error_code == 401002
    e.secondary = slot(new)
    emu.dps.put_individual(e)
    clock.advance(5)
    result = emu.register("dev-1", [new])
    assert result.substatus == "reprovisionedToInitialAssignment"
    assert emu.hub.get_device("dev-1").primary_thumbprint == thumbprint(new)
    assert emu.hub.get_device("dev-1").secondary_thumbprint is None
    assert emu.events.drain(LIFECYCLE)[0]["eventType"].endswith("DeviceCreated")
    assert emu.events.drain(LIFECYCLE) == []  # re-registration does not create again
    # the old certificate is still enrolled in primary, so it still registers
    assert emu.register("dev-1", [old]).device_id == "dev-1"
    assert emu.hub.get_device("dev-1").primary_thumbprint == thumbprint(old)


def test_expired_certificate_is_refused(emu: FleetEmulator, clock: ManualClock) -> None:
    cert = self_signed("dev-1", T0 - timedelta(days=29), days=30)
    emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    emu.register("dev-1", [cert])
    clock.advance(2 * 86400)
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [cert])
    assert err.value.error_code == 401002
    assert "not valid" in err.value.message


def test_revoked_certificate_is_refused_when_checker_given(clock: ManualClock) -> None:
    good = self_signed("dev-1", T0)
    bad = self_signed("dev-2", T0)
    revoked = {bad.serial_number}

    def is_revoked(cert: x509.Certificate) -> bool:
        return cert.serial_number in revoked

    emu = FleetEmulator(clock, enforce_limits=False, is_revoked=is_revoked)
    emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(good)))
    emu.dps.put_individual(IndividualEnrollment("dev-2", primary=slot(bad)))
    assert emu.register("dev-1", [good]).status == "assigned"
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-2", [bad])
    assert err.value.status == 401
    assert "revoked" in err.value.message
    with pytest.raises(NotFoundError):
        emu.hub.get_device("dev-2")


def test_group_member_registers_with_leaf_chain_and_intermediate(
    emu: FleetEmulator, root: Ca, issuing: Ca
) -> None:
    _group(emu, root)
    leaf = issuing.issue("dev-7", T0)
    result = emu.register("dev-7", [leaf, issuing.cert])
    assert result.enrollment == "group:fleet"
    assert emu.hub.get_device("dev-7").primary_thumbprint == thumbprint(leaf)
    # without the intermediate the chain does not lead to the root
    other = issuing.issue("dev-8", T0)
    with pytest.raises(RegistrationError):
        emu.register("dev-8", [other])


def test_group_by_verified_ca_reference(emu: FleetEmulator, issuing: Ca) -> None:
    emu.add_verified_ca("issuing", issuing.cert)
    emu.dps.put_group(EnrollmentGroup("fleet", ca_primary="issuing"))
    assert emu.register("dev-3", [issuing.issue("dev-3", T0)]).enrollment == "group:fleet"


def test_forged_chain_is_refused(emu: FleetEmulator, root: Ca) -> None:
    _group(emu, root)
    impostor = make_root("certroll test root", T0 - timedelta(days=1))  # same name, other key
    leaf = impostor.issue("dev-9", T0)
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-9", [leaf, impostor.cert])
    assert err.value.error_code == 401002


def test_individual_checked_before_group(emu: FleetEmulator, issuing: Ca) -> None:
    _group(emu, issuing)
    leaf = issuing.issue("dev-1", T0)
    emu.dps.put_individual(IndividualEnrollment("dev-1", device_id="custom-id", primary=slot(leaf)))
    result = emu.register("dev-1", [leaf])
    assert result.enrollment == "individual:dev-1"
    assert result.device_id == "custom-id"
    # an individual enrollment for the id that holds another certificate decides alone
    other = issuing.issue("dev-2", T0)
    emu.dps.put_individual(IndividualEnrollment("dev-2", primary=slot(self_signed("dev-2", T0))))
    with pytest.raises(RegistrationError):
        emu.register("dev-2", [other])


def test_disabled_individual_blocks_group_member(emu: FleetEmulator, issuing: Ca) -> None:
    _group(emu, issuing)
    leaf = issuing.issue("dev-1", T0)
    assert emu.register("dev-1", [leaf]).enrollment == "group:fleet"
    emu.dps.put_individual(
        IndividualEnrollment(
            "dev-1", primary=slot(leaf), provisioning_status=ProvisioningStatus.DISABLED
        )
    )
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [leaf])
    assert err.value.status == 403
    assert err.value.registration_status == "disabled"
    # a sibling in the same group is unaffected
    assert emu.register("dev-2", [issuing.issue("dev-2", T0)]).status == "assigned"


def test_disabled_group_refuses(emu: FleetEmulator, issuing: Ca) -> None:
    emu.dps.put_group(
        EnrollmentGroup(
            "fleet", primary=slot(issuing.cert), provisioning_status=ProvisioningStatus.DISABLED
        )
    )
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [issuing.issue("dev-1", T0)])
    assert err.value.status == 403


def test_cn_must_equal_registration_id(emu: FleetEmulator, issuing: Ca) -> None:
    _group(emu, issuing)
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [issuing.issue("dev-2", T0)])
    assert err.value.error_code == 401002


def test_reprovision_without_migration_resets_twin(emu: FleetEmulator, issuing: Ca) -> None:
    emu.dps.put_group(
        EnrollmentGroup("fleet", primary=slot(issuing.cert), reprovision_migrate_data=False)
    )
    leaf = issuing.issue("dev-1", T0)
    emu.register("dev-1", [leaf])
    emu.hub.patch_desired("dev-1", {"a": 1})
    assert emu.register("dev-1", [leaf]).substatus == "deviceDataReset"
    assert emu.hub.get_twin("dev-1").desired == {}


@pytest.mark.parametrize("chain", [[], ["not a cert"]])
def test_bad_chain_is_invalid_request(emu: FleetEmulator, chain: list[object]) -> None:
    from shared.domain.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        emu.register("dev-1", chain)  # type: ignore[arg-type]
