"""Who may hold a slot: the one rule every slot write follows, whatever the path (twin
report, HTTP API, Connections log, campaign, CLI). Its companion for issuance -- a new
certificate is never issued for a public key that any earlier certificate of the device
carried, nor for the key of any revoked certificate, whatever the reason (``compromise``,
``allow`` and ``ca-roll`` included), and the issuer's idempotent look-up returns an
earlier certificate only to the same open request -- is enforced by the issuer
(``shared.pki.issuer``). docs/issuing.md ("The key and slot rule") states both for
operators; docs/security.md lists the threats they stop and the tests that show it.

    A certificate may be in a device's DPS enrollment slots or self-signed hub identity
    only if, per the issuance ledger, it is

    * issued **to that device**, and
    * either the device's **current** certificate (``RotationRecord.current_serial``) or
      the one its **open request** issued (``RotationRecord.new_serial`` while the record
      is in flight, with the ledger entry's ``request_id`` equal to the record's), and
    * **valid** now (``not_before <= now < not_after``), and
    * neither revoked, superseded nor failed: its ledger status is ``issued`` or
      ``active`` -- an allow-list, so any status added later (e.g. ``failed``) is refused
      until it is named here.

    A disallowed device may hold nothing. Nothing else ever goes in: a retired
    certificate (superseded by a finished rotation, withdrawn by a failed one, revoked)
    never comes back, whoever asks.

Pure functions over the record and ledger entries the caller has read; no port calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from shared.domain.model import (
    CertificateRecord,
    CertificateStatus,
    RotationRecord,
    RotationState,
)
from shared.domain.rotation.states import IN_FLIGHT

#: ledger statuses a slot may hold (an allow-list: see the module docstring)
ADMISSIBLE_STATUSES: frozenset[CertificateStatus] = frozenset(
    {CertificateStatus.ISSUED, CertificateStatus.ACTIVE}
)
#: ledger statuses that never go into a slot again
RETIRED: frozenset[CertificateStatus] = frozenset(
    {CertificateStatus.REVOKED, CertificateStatus.SUPERSEDED, CertificateStatus.FAILED}
)


def open_request_serial(rec: RotationRecord | None) -> str | None:
    """The serial the record's open request issued, if a request is open and issued."""
    if rec is None or rec.state not in IN_FLIGHT or not rec.request_id:
        return None
    return rec.new_serial


def refusal(
    cert: CertificateRecord, device_id: str, rec: RotationRecord | None, now: datetime
) -> str | None:
    """Why ``cert`` may not be in ``device_id``'s slots (None: it may)."""
    if cert.device_id != device_id:
        return "foreign_certificate"
    if rec is None:
        return "no_rotation_record"
    if rec.state is RotationState.DISALLOWED:
        return "device_disallowed"
    if cert.status not in ADMISSIBLE_STATUSES:
        return f"{cert.status.value}_certificate"
    if not cert.not_before <= now < cert.not_after:
        return "expired_certificate" if now >= cert.not_after else "not_yet_valid"
    if cert.serial == rec.current_serial:
        return None
    if cert.serial == open_request_serial(rec) and cert.request_id == rec.request_id:
        return None
    return "not_current_nor_requested"


#: the name the slot-writing steps use
slot_refusal = refusal


def is_admissible(
    cert: CertificateRecord, device_id: str, rec: RotationRecord | None, now: datetime
) -> bool:
    """Whether ``cert`` may be in ``device_id``'s enrollment or hub identity now."""
    return refusal(cert, device_id, rec, now) is None


def admissible_certificates(
    device_id: str,
    rec: RotationRecord | None,
    ledger: Iterable[CertificateRecord],
    now: datetime,
) -> list[CertificateRecord]:
    """The device's certificates (from ``ledger``, e.g. ``list_for_device``) that may be
    in its slots now: at most two, the current one first."""
    found = [c for c in ledger if is_admissible(c, device_id, rec, now)]
    current = rec.current_serial if rec is not None else None
    return sorted(found, key=lambda c: (c.serial != current, c.issued_at))
