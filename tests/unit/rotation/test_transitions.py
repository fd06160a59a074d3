"""The record's transitions, tested as the pure functions they are (no ports, no fakes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.messages import CsrAnswer
from shared.domain.model import ReportedCertificate, RotationRecord, RotationState, Trigger
from shared.domain.rotation import transitions as t
from shared.domain.rotation.slots import choose_slot
from shared.domain.rotation.states import CONFIRMABLE, IN_FLIGHT, device_reason, trigger_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def running(**fields: object) -> RotationRecord:
    base = {
        "device_id": "dev-1",
        "state": RotationState.DELIVERED,
        "request_id": "r1",
        "reason": "manual",
        "csr_pem": "PEM",
        "csr_sha256": "aa" * 32,
        "new_serial": "2b",
        "new_thumbprint": "bb" * 32,
        "current_serial": "1a",
        "current_thumbprint": "cc" * 32,
        "current_not_after": NOW,
        "slot": "secondary",
        "attempts": 2,
        "deadline": NOW,
        "last_error": "earlier",
    }
    base.update(fields)
    return RotationRecord(**base)  # type: ignore[arg-type]


def test_apply_returns_a_copy_and_leaves_the_record() -> None:
    rec = running()
    after = t.apply(rec, {"attempts": 9})
    assert after.attempts == 9
    assert rec.attempts == 2


def test_open_request_clears_every_request_field() -> None:
    after = t.apply(
        running(state=RotationState.FAILED), t.open_request(Trigger.CA_ROLL, "r2", LATER)
    )
    assert after.state is RotationState.CSR_REQUESTED
    assert (after.request_id, after.reason, after.deadline) == ("r2", "ca-roll", LATER)
    for name in ("csr_pem", "csr_sha256", "new_serial", "new_thumbprint", "slot", "last_error"):
        assert getattr(after, name) is None, name
    assert after.attempts == 0
    # the certificate in use is not a request field
    assert (after.current_serial, after.current_thumbprint) == ("1a", "cc" * 32)


def test_allowed_opens_an_allow_request_and_forgets_the_disallow() -> None:
    rec = running(state=RotationState.DISALLOWED, disallowed_by="sec", disallowed_reason="stolen")
    after = t.apply(rec, t.allowed("r3", LATER))
    assert after.state is RotationState.CSR_REQUESTED
    assert after.reason == Trigger.ALLOW.value
    assert after.disallowed_by is None
    assert after.disallowed_reason is None


def test_csr_received_binds_the_request_to_the_csr() -> None:
    csr = CsrAnswer(request_id="r1", pem="P", sha256="dd" * 32)
    after = t.apply(running(state=RotationState.CSR_REQUESTED), t.csr_received(csr, LATER))
    assert after.state is RotationState.CSR_RECEIVED
    assert (after.csr_pem, after.csr_sha256, after.deadline) == ("P", "dd" * 32, LATER)
    assert after.last_error is None


def test_csr_still_awaited_counts_the_wait() -> None:
    after = t.apply(
        running(state=RotationState.CSR_REQUESTED), t.csr_still_awaited(running(), LATER)
    )
    assert after.state is RotationState.CSR_REQUESTED
    assert after.attempts == 3
    assert after.last_error == "no CSR from the device yet"


def test_issued_enrolled_delivered_chain() -> None:
    rec = running(state=RotationState.CSR_RECEIVED, new_serial=None, new_thumbprint=None)
    issued = t.apply(rec, t.issued("3c", "AB" * 32))
    assert issued.state is RotationState.ISSUED
    assert issued.new_thumbprint == "ab" * 32  # thumbprints are stored lower-case
    enrolled = t.apply(issued, t.enrolled("primary"))
    assert (enrolled.state, enrolled.slot) == (RotationState.ENROLLED, "primary")
    delivered = t.apply(enrolled, t.delivered(NOW))
    assert (delivered.state, delivered.attempts, delivered.deadline) == (
        RotationState.DELIVERED,
        0,
        NOW,
    )


def test_reprovision_outcomes() -> None:
    rec = running()
    sent = t.apply(rec, t.reprovision_sent(rec, LATER))
    assert (sent.state, sent.attempts, sent.deadline, sent.last_error) == (
        RotationState.REPROVISION_SENT,
        3,
        LATER,
        None,
    )
    missed = t.apply(rec, t.reprovision_missed(rec, LATER, "device offline"))
    assert (missed.state, missed.attempts, missed.last_error) == (
        RotationState.DELIVERED,
        3,
        "device offline",
    )
    scheduled = t.apply(rec, t.reprovision_scheduled(rec, LATER))
    assert scheduled.state is RotationState.REPROVISION_SENT
    assert scheduled.last_error == "earlier"  # a bulk job leaves the last error as it was
    again = t.apply(sent, t.redeliver(NOW))
    assert (again.state, again.deadline) == (RotationState.DELIVERED, NOW)


def test_finished_makes_the_new_certificate_current_and_clears_the_request() -> None:
    rec = t.apply(running(), t.confirmed())
    assert rec.state is RotationState.CONFIRMED
    after = t.apply(rec, t.finished(rec, LATER))
    assert after.state is RotationState.IDLE
    assert (after.current_serial, after.current_thumbprint, after.current_not_after) == (
        "2b",
        "bb" * 32,
        LATER,
    )
    assert after.request_id is None
    assert after.new_serial is None
    assert after.attempts == 0


def test_failed_keeps_the_request_for_the_retry() -> None:
    after = t.apply(running(), t.failed("csr_invalid", "bad key"))
    assert after.state is RotationState.FAILED
    assert after.last_error == "csr_invalid: bad key"
    assert after.deadline is None
    assert after.reason == "manual"


def test_adopted_and_expiry_seen() -> None:
    cert = ReportedCertificate(
        thumbprint_sha256="ee" * 32, serial="4d", not_before=NOW, not_after=LATER
    )
    after = t.apply(RotationRecord(device_id="dev-1"), t.adopted(cert))
    assert (after.current_serial, after.current_thumbprint, after.current_not_after) == (
        "4d",
        "ee" * 32,
        LATER,
    )
    assert t.apply(after, t.expiry_seen(NOW)).current_not_after == NOW


def test_disallow_is_marked_unfinished_until_completed() -> None:
    after = t.apply(running(), t.disallowed("sec", "stolen"))
    assert after.state is RotationState.DISALLOWED
    assert (after.disallowed_by, after.disallowed_reason) == ("sec", "stolen")
    assert after.last_error == t.DISALLOW_IN_PROGRESS
    assert after.deadline is None
    assert t.apply(after, t.disallow_completed()).last_error is None


@pytest.mark.parametrize(
    ("primary", "secondary", "keep", "expected"),
    [
        ("a", "b", "a", "secondary"),
        ("a", "b", "b", "primary"),
        (None, "b", None, "primary"),
        ("a", None, None, "secondary"),
        ("a", "b", None, "secondary"),
    ],
)
def test_slot_rule(
    primary: str | None, secondary: str | None, keep: str | None, expected: str
) -> None:
    assert choose_slot(primary, secondary, keep) == expected


def test_slot_rule_replaces_the_slot_expiring_first() -> None:
    assert choose_slot("a", "b", "c", NOW, LATER) == "primary"
    assert choose_slot("a", "b", "c", LATER, NOW) == "secondary"


def test_state_groups_and_reasons() -> None:
    assert CONFIRMABLE < IN_FLIGHT
    assert RotationState.IDLE not in IN_FLIGHT
    assert device_reason("allow") == "manual"
    assert device_reason("cli") == "manual"
    assert device_reason(None) == "expiring"
    assert device_reason("nonsense") == "manual"
    assert trigger_of("compromise") is Trigger.COMPROMISE
    assert trigger_of("nonsense") is Trigger.MANUAL
