"""Which calls a rotation can leave out without giving up the zero-downtime rule
(docs/performance.md, "Spending less per rotation").

- **The hub identity before delivery.** The device registers through DPS with the staged
  certificate before it connects to the hub with it (docs/device-contract.md), and the
  registration puts the new thumbprint on the hub identity (the only one: DPS replaces
  the identity's authentication). Writing it there first is one read and one write of the
  hub's identity registry (100 a minute on S1) that the registration makes anyway; a
  device whose registration fails keeps its current certificate, which the identity
  still holds. Kept for ``allow`` (the identity must be enabled before the device can
  come back).
- **The hub identity after confirmation.** For the same reason the confirmed identity
  holds only the new thumbprint: nothing to clear. Kept for ``compromise`` (the old
  thumbprint must be gone, whatever path the device took) and ``allow``, and when a 401
  reconcile wrote the identity during the rotation (the record's ``hub_cleanup``).
- **A group member's individual enrollment after confirmation.** Enrolling found none
  (the record's slot is ``group``): no second read of an enrollment that does not exist.
"""

from __future__ import annotations

from shared.domain.model import RotationRecord, Trigger
from shared.domain.rotation.states import trigger_of

#: reasons whose rotation still writes the hub identity itself
_HUB_WRITES = frozenset({Trigger.ALLOW})
#: reasons whose finish still makes sure the hub identity holds only the new thumbprint
_HUB_CLEANUP = frozenset({Trigger.ALLOW, Trigger.COMPROMISE})


def hub_write_before_delivery(rec: RotationRecord) -> bool:
    """Whether the enroll step writes the new thumbprint onto the hub identity."""
    return trigger_of(rec.reason) in _HUB_WRITES


def hub_cleanup_after_confirmation(rec: RotationRecord) -> bool:
    """Whether the finish reads (and if need be rewrites) the hub identity."""
    return rec.hub_cleanup or trigger_of(rec.reason) in _HUB_CLEANUP


def enrollment_cleanup_after_confirmation(rec: RotationRecord) -> bool:
    """Whether the finish reads the individual enrollment to empty the old slot."""
    return rec.slot != "group"
