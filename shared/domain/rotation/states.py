"""The rotation states grouped by what they mean, and the names of a request's reason.

One :class:`~shared.domain.model.RotationRecord` per device moves

    idle -> csr_requested -> csr_received -> issued -> enrolled -> delivered
         -> reprovision_sent -> confirmed -> idle        (+ failed, disallowed)
"""

from __future__ import annotations

from shared.domain.model import RotationState, Trigger

REPROVISION_METHOD = "reprovision"
SYSTEM_ACTOR = "system:rotation"

#: states in which a rotation is running
IN_FLIGHT: frozenset[RotationState] = frozenset(
    {
        RotationState.CSR_REQUESTED,
        RotationState.CSR_RECEIVED,
        RotationState.ISSUED,
        RotationState.ENROLLED,
        RotationState.DELIVERED,
        RotationState.REPROVISION_SENT,
        RotationState.CONFIRMED,
    }
)
#: states in which the new certificate is enrolled, so the device may be using it
CONFIRMABLE: frozenset[RotationState] = frozenset(
    {RotationState.ENROLLED, RotationState.DELIVERED, RotationState.REPROVISION_SENT}
)
#: states in which the rotation waits for the device
WAITING_ON_DEVICE: frozenset[RotationState] = frozenset(
    {RotationState.CSR_REQUESTED, RotationState.DELIVERED, RotationState.REPROVISION_SENT}
)
#: states a repeated CSR report drives on: nothing in them waits for the device
RESUMABLE_ON_CSR: frozenset[RotationState] = frozenset(
    {RotationState.CSR_RECEIVED, RotationState.ISSUED, RotationState.ENROLLED}
)
#: the reasons the device contract knows (docs/device-contract.md)
_DEVICE_REASONS = {
    Trigger.EXPIRING: "expiring",
    Trigger.MANUAL: "manual",
    Trigger.COMPROMISE: "compromise",
    Trigger.CA_ROLL: "ca-roll",
    Trigger.CLI: "manual",
    Trigger.ALLOW: "manual",
}


def device_reason(reason: str | None) -> str:
    """The reason as the device contract names it."""
    try:
        return _DEVICE_REASONS[Trigger(reason or Trigger.EXPIRING.value)]
    except ValueError:
        return "manual"


def trigger_of(reason: str | None) -> Trigger:
    """A record's stored reason as a Trigger (unknown: manual)."""
    try:
        return Trigger(reason or Trigger.EXPIRING.value)
    except ValueError:
        return Trigger.MANUAL
