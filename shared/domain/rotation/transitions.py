"""The record's transitions as pure functions: each returns the changes to save.

Nothing here reads or writes anything; the use cases perform the side effects of a
step first and then save ``transition(...)`` through the unit of work
(:mod:`shared.domain.rotation.unit_of_work`). :func:`apply` shows what a record would
become, which is all a test of a transition needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.domain.messages import CsrAnswer
from shared.domain.model import ReportedCertificate, RotationRecord, RotationState, Trigger

#: field name -> new value, as ``dataclasses.replace`` takes them
Changes = dict[str, Any]

#: a record's request fields, cleared when a rotation starts and when it ends
NO_REQUEST: Mapping[str, Any] = {
    "request_id": None,
    "reason": None,
    "csr_pem": None,
    "csr_sha256": None,
    "new_serial": None,
    "new_thumbprint": None,
    "slot": None,
    "hub_cleanup": False,
    "attempts": 0,
    "deadline": None,
    "last_error": None,
}


def apply(rec: RotationRecord, changes: Mapping[str, Any]) -> RotationRecord:
    """``rec`` with ``changes`` (a copy; ``rec`` is left as it is)."""
    return dataclasses.replace(rec, **changes)


# --------------------------------------------------------------------------- a request


def open_request(reason: Trigger, request_id: str, deadline: datetime, **extra: Any) -> Changes:
    """idle/failed/disallowed -> csr_requested: a new request, every old field cleared."""
    started = {
        "state": RotationState.CSR_REQUESTED,
        "request_id": request_id,
        "reason": reason.value,
        "deadline": deadline,
    }
    return dict(NO_REQUEST) | started | extra


def csr_still_awaited(rec: RotationRecord, deadline: datetime) -> Changes:
    """csr_requested past its deadline without a CSR: count the wait, wait again."""
    return {
        "attempts": rec.attempts + 1,
        "deadline": deadline,
        "last_error": "no CSR from the device yet",
    }


def csr_received(csr: CsrAnswer, deadline: datetime) -> Changes:
    """csr_requested -> csr_received: the request is bound to this CSR for good."""
    return {
        "state": RotationState.CSR_RECEIVED,
        "csr_pem": csr.pem,
        "csr_sha256": csr.sha256,
        "deadline": deadline,
        "last_error": None,
    }


def issued(serial: str, thumbprint_sha256: str) -> Changes:
    """csr_received -> issued (kept in memory: the next write is after delivery)."""
    return {
        "state": RotationState.ISSUED,
        "new_serial": serial,
        "new_thumbprint": thumbprint_sha256.lower(),
    }


def enrolled(slot: str) -> Changes:
    """issued -> enrolled: the new certificate sits in ``slot`` (or "group")."""
    return {"state": RotationState.ENROLLED, "slot": slot}


def delivered(now: datetime) -> Changes:
    """enrolled -> delivered: the desired twin carries the certificate; reprovision due now."""
    return {"state": RotationState.DELIVERED, "attempts": 0, "deadline": now}


def reprovision_sent(rec: RotationRecord, deadline: datetime) -> Changes:
    """delivered -> reprovision_sent: the device acknowledged the reprovision call."""
    return {
        "state": RotationState.REPROVISION_SENT,
        "attempts": rec.attempts + 1,
        "deadline": deadline,
        "last_error": None,
    }


def reprovision_scheduled(rec: RotationRecord, deadline: datetime) -> Changes:
    """delivered -> reprovision_sent through a bulk hub job."""
    return {
        "state": RotationState.REPROVISION_SENT,
        "attempts": rec.attempts + 1,
        "deadline": deadline,
    }


def reprovision_missed(rec: RotationRecord, retry_at: datetime, error: str) -> Changes:
    """delivered, the device offline or refusing: try again at ``retry_at``."""
    return {"attempts": rec.attempts + 1, "deadline": retry_at, "last_error": error}


def redeliver(now: datetime) -> Changes:
    """reprovision_sent past its deadline unconfirmed -> delivered (reprovision again)."""
    return {
        "state": RotationState.DELIVERED,
        "deadline": now,
        "last_error": "no confirmation; reprovision again",
    }


def confirmed() -> Changes:
    """enrolled/delivered/reprovision_sent -> confirmed (never written on its own)."""
    return {"state": RotationState.CONFIRMED, "last_error": None}


def hub_written() -> Changes:
    """A 401 reconcile is about to write the hub identity of a device mid-rotation: its
    finish cleans the identity (economy.py otherwise leaves that read out)."""
    return {"hub_cleanup": True}


def finished(rec: RotationRecord, new_not_after: datetime) -> Changes:
    """confirmed -> idle: the new certificate is the current one; the request is cleared."""
    return dict(NO_REQUEST) | {
        "state": RotationState.IDLE,
        "current_serial": rec.new_serial,
        "current_thumbprint": rec.new_thumbprint,
        "current_not_after": new_not_after,
    }


def failed(code: str, message: str) -> Changes:
    """any running state -> failed; the sweep retries it."""
    return {"state": RotationState.FAILED, "last_error": f"{code}: {message}", "deadline": None}


def allow_failed(code: str, actor: str) -> Changes:
    """A request letting a disallowed device back in failed -> disallowed again (the
    operator may allow it again with a new CSR)."""
    return dict(NO_REQUEST) | {
        "state": RotationState.DISALLOWED,
        "disallowed_by": actor,
        "disallowed_reason": f"the allow failed ({code}); allow again with a new CSR",
    }


# --------------------------------------------------------------------------- current certificate


def adopted(cert: ReportedCertificate) -> Changes:
    """The device uses ``cert`` (reported on its twin)."""
    return {
        "current_serial": cert.serial,
        "current_thumbprint": cert.thumbprint_sha256,
        "current_not_after": cert.not_after,
    }


def expiry_seen(not_after: datetime) -> Changes:
    """The current certificate's notAfter as the device reports it."""
    return {"current_not_after": not_after}


# --------------------------------------------------------------------------- disallow


DISALLOW_IN_PROGRESS = "disallow in progress"


def disallowed(actor: str, reason: str) -> Changes:
    """any -> disallowed; ``last_error`` marks the disallow unfinished until
    :func:`disallow_completed`."""
    return {
        "state": RotationState.DISALLOWED,
        "disallowed_by": actor,
        "disallowed_reason": reason,
        "deadline": None,
        "last_error": DISALLOW_IN_PROGRESS,
    }


def disallow_completed() -> Changes:
    return {"last_error": None}


def allowed(request_id: str, deadline: datetime) -> Changes:
    """disallowed -> csr_requested with reason ``allow``."""
    return open_request(
        Trigger.ALLOW, request_id, deadline, disallowed_by=None, disallowed_reason=None
    )
