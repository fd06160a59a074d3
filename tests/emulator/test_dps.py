from __future__ import annotations

from datetime import timedelta

import pytest

from local.emulator import FleetEmulator
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.model import (
    CertificateSlot,
    EnrollmentGroup,
    IndividualEnrollment,
    ProvisioningStatus,
)
from tests.emulator.conftest import T0
from tests.emulator.support import Ca, self_signed, slot, thumbprint


def test_put_individual_returns_info_only_slots(emu: FleetEmulator) -> None:
    cert = self_signed("dev-1", T0)
    stored = emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    assert stored.primary is not None
    assert stored.primary.pem is None
    assert stored.primary.thumbprint_sha256 == thumbprint(cert)
    assert stored.primary.not_after == cert.not_valid_after_utc
    assert stored.primary.subject == "CN=dev-1"
    assert stored.secondary is None
    assert stored.device_id == "dev-1"
    assert stored.etag
    read = emu.dps.get_individual("dev-1")
    assert read == stored


def test_create_existing_conflicts_and_stale_etag_fails(emu: FleetEmulator) -> None:
    cert = self_signed("dev-1", T0)
    first = emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    with pytest.raises(ConflictError):
        emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    first.provisioning_status = ProvisioningStatus.DISABLED
    second = emu.dps.put_individual(first)
    assert second.etag != first.etag
    assert second.provisioning_status is ProvisioningStatus.DISABLED
    first.provisioning_status = ProvisioningStatus.ENABLED
    with pytest.raises(ConcurrencyError):
        emu.dps.put_individual(first)  # first.etag is stale now
    assert emu.dps.get_individual("dev-1").provisioning_status is ProvisioningStatus.DISABLED


def test_put_with_etag_of_missing_enrollment_is_not_found(emu: FleetEmulator) -> None:
    cert = self_signed("dev-1", T0)
    with pytest.raises(NotFoundError):
        emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert), etag='"x"'))
    with pytest.raises(NotFoundError):
        emu.dps.get_individual("dev-1")


def test_slot_kept_by_thumbprint_written_by_pem_cleared_by_none(emu: FleetEmulator) -> None:
    old = self_signed("dev-1", T0)
    new = self_signed("dev-1", T0 + timedelta(days=1))
    e = emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(old)))
    # keep primary (info only, as read), write secondary
    e.secondary = slot(new)
    e = emu.dps.put_individual(e)
    assert e.primary is not None
    assert e.primary.thumbprint_sha256 == thumbprint(old)
    assert e.secondary is not None
    assert e.secondary.thumbprint_sha256 == thumbprint(new)
    # clear primary
    e.primary = None
    e = emu.dps.put_individual(e)
    assert e.primary is None
    assert e.secondary is not None
    assert e.secondary.thumbprint_sha256 == thumbprint(new)


@pytest.mark.parametrize(
    "bad_slot",
    [
        CertificateSlot(thumbprint_sha256="ab" * 32),  # thumbprint of nothing stored
        CertificateSlot(pem="-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"),
        CertificateSlot(),
    ],
)
def test_bad_slot_is_rejected_and_changes_nothing(
    emu: FleetEmulator, bad_slot: CertificateSlot
) -> None:
    cert = self_signed("dev-1", T0)
    e = emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    e.secondary = bad_slot
    with pytest.raises(InvalidRequestError):
        emu.dps.put_individual(e)
    assert emu.dps.get_individual("dev-1") == IndividualEnrollment(
        "dev-1",
        device_id="dev-1",
        primary=e.primary,
        iot_hub_host_name=emu.hub_host,
        etag=e.etag,
    )


@pytest.mark.parametrize("reg_id", ["", "has space", "x" * 129, "slash/no"])
def test_bad_registration_id_is_rejected(emu: FleetEmulator, reg_id: str) -> None:
    with pytest.raises(InvalidRequestError):
        emu.dps.put_individual(IndividualEnrollment(reg_id, primary=slot(self_signed("a", T0))))


def test_individual_needs_a_certificate(emu: FleetEmulator) -> None:
    with pytest.raises(InvalidRequestError):
        emu.dps.put_individual(IndividualEnrollment("dev-1"))


def test_group_with_signing_cert_and_ca_reference(emu: FleetEmulator, root: Ca) -> None:
    g = emu.dps.put_group(EnrollmentGroup("fleet", primary=slot(root.cert)))
    assert g.primary is not None
    assert g.primary.pem is None
    assert g.primary.thumbprint_sha256 == thumbprint(root.cert)
    with pytest.raises(InvalidRequestError):  # CA not verified yet
        emu.dps.put_group(EnrollmentGroup("fleet2", ca_primary="root"))
    emu.add_verified_ca("root", root.cert)
    g2 = emu.dps.put_group(EnrollmentGroup("fleet2", ca_primary="root"))
    assert g2.ca_primary == "root"
    with pytest.raises(InvalidRequestError):
        emu.dps.put_group(EnrollmentGroup("mixed", primary=slot(root.cert), ca_primary="root"))
    with pytest.raises(InvalidRequestError):
        emu.dps.put_group(EnrollmentGroup("empty"))
    with pytest.raises(ConcurrencyError):
        emu.dps.delete_group("fleet", etag='"stale"')
    emu.dps.delete_group("fleet", etag=g.etag)
    with pytest.raises(NotFoundError):
        emu.dps.get_group("fleet")


def test_query_individual_pages_with_continuation(emu: FleetEmulator) -> None:
    cert = self_signed("x", T0)
    ids = [f"dev-{i:03d}" for i in range(25)]
    for rid in reversed(ids):
        emu.dps.put_individual(IndividualEnrollment(rid, primary=slot(cert)))
    seen: list[str] = []
    cont = None
    pages = 0
    while True:
        page = emu.dps.query_individual(page_size=10, continuation=cont)
        pages += 1
        seen += [e.registration_id for e in page.items]
        assert all(e.primary is not None and e.primary.pem is None for e in page.items)
        cont = page.continuation
        if cont is None:
            break
    assert pages == 3
    assert seen == ids
    with pytest.raises(InvalidRequestError):
        emu.dps.query_individual(page_size=0)


def test_query_groups_and_delete_individual(emu: FleetEmulator, root: Ca) -> None:
    emu.dps.put_group(EnrollmentGroup("b", primary=slot(root.cert)))
    emu.dps.put_group(EnrollmentGroup("a", primary=slot(root.cert)))
    page = emu.dps.query_groups()
    assert [g.group_id for g in page.items] == ["a", "b"]
    assert page.continuation is None
    e = emu.dps.put_individual(IndividualEnrollment("d", primary=slot(self_signed("d", T0))))
    with pytest.raises(ConcurrencyError):
        emu.dps.delete_individual("d", etag='"old"')
    emu.dps.delete_individual("d", etag=e.etag)
    with pytest.raises(NotFoundError):
        emu.dps.delete_individual("d")
