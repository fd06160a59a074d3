"""The soak's invariant checker fails when the end state is wrong."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from local.soak.invariants import DeviceView, check, double_issuances, readable
from shared.domain.model import CertificateRecord, CertificateStatus

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _row(
    serial: str, device: str, trigger: str, request: str, status: CertificateStatus
) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        device_id=device,
        thumbprint_sha256=f"tp{serial}",
        not_before=T0,
        not_after=T0 + timedelta(days=30),
        csr_sha256=f"csr{serial}",
        issuer_key_id="file:test",
        trigger=trigger,
        request_id=request,
        status=status,
        pem="",
        issued_at=T0,
    )


def _world() -> tuple[list[DeviceView], list[CertificateRecord]]:
    devices = [
        DeviceView(
            "dev-1",
            False,
            "a1",
            "b1",
            "tpb1",
            True,
            True,
            True,
            frozenset({"tpb1"}),
            frozenset({"tpb1"}),
        ),
        DeviceView("dev-2", False, "a2", "b2", "tpb2", True, True, True, None, None),
        DeviceView("dev-3", True, "a3", "a3", "tpa3", True, False, False, frozenset(), None),
    ]
    ledger = [
        _row("a1", "dev-1", "provision", "p1", CertificateStatus.SUPERSEDED),
        _row("b1", "dev-1", "expiring", "r1", CertificateStatus.ACTIVE),
        _row("a2", "dev-2", "provision", "p2", CertificateStatus.SUPERSEDED),
        _row("b2", "dev-2", "expiring", "r2", CertificateStatus.ACTIVE),
        _row("a3", "dev-3", "provision", "p3", CertificateStatus.REVOKED),
    ]
    return devices, ledger


def _names(verdict: object) -> dict[str, bool]:
    return {i.name: i.ok for i in verdict.invariants}  # type: ignore[attr-defined]


def test_a_consistent_end_state_passes() -> None:
    devices, ledger = _world()
    verdict = check(
        devices, ledger, [0xA3], 1, [("m1", "ServiceError: DPS put_individual: HTTP 500")]
    )
    assert verdict.ok, [i for i in verdict.invariants if not i.ok]
    assert (verdict.lost, verdict.double_issuances, verdict.rotations_completed) == (0, 0, 2)


def test_a_double_issuance_fails() -> None:
    devices, ledger = _world()
    ledger.append(_row("c1", "dev-1", "expiring", "r1", CertificateStatus.ISSUED))
    verdict = check(devices, ledger, [0xA3], 0, [])
    assert not verdict.ok
    assert verdict.double_issuances == 2  # same request twice, and two live renewals
    assert not _names(verdict)["exactly one issuance per renewal request"]


def test_a_second_rotation_for_one_device_counts_as_double() -> None:
    _, ledger = _world()
    ledger[1] = dataclasses.replace(ledger[1], status=CertificateStatus.SUPERSEDED)
    ledger.append(_row("c1", "dev-1", "expiring", "r9", CertificateStatus.ACTIVE))
    assert len(double_issuances(ledger)) == 1


def test_a_device_left_on_its_old_certificate_is_lost() -> None:
    devices, ledger = _world()
    devices[1] = dataclasses.replace(devices[1], current_serial="a2", current_thumbprint="tpa2")
    verdict = check(devices, ledger, [0xA3], 0, [])
    assert verdict.lost == 1
    assert not verdict.ok


def test_a_certificate_the_hub_refuses_is_lost() -> None:
    devices, ledger = _world()
    devices[0] = dataclasses.replace(devices[0], hub_accepts=False)
    assert check(devices, ledger, [0xA3], 0, []).lost == 1


def test_a_slot_holding_a_retired_certificate_fails_the_agreement() -> None:
    devices, ledger = _world()
    devices[0] = dataclasses.replace(devices[0], enrollment_thumbprints=frozenset({"tpb1", "tpa1"}))
    verdict = check(devices, ledger, [0xA3], 0, [])
    assert not _names(verdict)["ledger, enrollments and hub identities agree"]


def test_a_crl_missing_or_adding_a_serial_fails() -> None:
    devices, ledger = _world()
    assert not check(devices, ledger, [], 0, []).ok
    assert not check(devices, ledger, [0xA3, 0xB1], 0, []).ok


def test_a_disallowed_device_let_in_fails() -> None:
    devices, ledger = _world()
    devices[2] = dataclasses.replace(devices[2], hub_accepts=True)
    assert not check(devices, ledger, [0xA3], 0, []).ok


def test_a_poison_message_without_a_readable_reason_fails() -> None:
    devices, ledger = _world()
    assert not check(devices, ledger, [0xA3], 2, [("m1", "ServiceError: HTTP 500 from DPS")]).ok
    assert not check(devices, ledger, [0xA3], 1, [("m1", "ServiceError: ")]).ok
    assert readable("ThrottledError: storage is throttling (HTTP 429)")
    assert not readable("KeyError: 'x'")


def test_a_refused_certificate_or_a_killed_message_that_never_came_back_fails() -> None:
    devices, ledger = _world()
    devices[0] = dataclasses.replace(devices[0], refusals=1)
    assert not check(devices, ledger, [0xA3], 0, []).ok
    devices, ledger = _world()
    assert not check(devices, ledger, [0xA3], 0, [], ["m7"]).ok
