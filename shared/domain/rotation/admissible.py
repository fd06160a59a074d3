"""Who may hold a slot, and which keys may be certified: the one rule certroll's
issuer and every slot write follow, whatever the path (twin report, HTTP API,
Connections log, campaign, CLI).

**The rule.** A certificate goes into an enrollment slot or a hub identity only if it
is the device's current certificate or the one its open request just issued, and it is
valid now and not revoked, superseded or failed. A new certificate is never issued for
a public key that any earlier certificate of the device carried, nor for the key of any
revoked certificate at all, whatever the reason of the renewal (``compromise``,
``allow`` and ``ca-roll`` included). The issuer's idempotent look-up may return an
earlier certificate only to the same open request.

docs/issuing.md ("The key and slot rule") states it for operators; docs/security.md
lists the threats it stops and the tests that show it.
"""

from __future__ import annotations

from datetime import datetime

from shared.domain.model import CertificateRecord, CertificateStatus, RotationRecord
from shared.domain.rotation.states import IN_FLIGHT

#: ledger statuses that never go into a slot again
RETIRED: frozenset[CertificateStatus] = frozenset(
    {CertificateStatus.REVOKED, CertificateStatus.SUPERSEDED, CertificateStatus.FAILED}
)


def slot_refusal(
    cert: CertificateRecord, device_id: str, rec: RotationRecord | None, now: datetime
) -> str | None:
    """Why ``cert`` may not go into ``device_id``'s enrollment or hub identity (a stable
    code), or None when it may. ``rec`` is the device's rotation record as last read."""
    if cert.device_id != device_id:
        return "foreign_certificate"
    if cert.status in RETIRED:
        return f"{cert.status.value}_certificate"
    if not cert.not_before <= now < cert.not_after:
        return "certificate_not_valid"
    holders = set()
    if rec is not None:
        holders.add(rec.current_serial)
        if rec.state in IN_FLIGHT:
            holders.add(rec.new_serial)
    if cert.serial not in holders - {None}:
        return "not_current_certificate"
    return None
