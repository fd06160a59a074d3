"""A campaign's read of DPS's individual enrollments: the enrollment query in pages
instead of one point read per rotation (docs/performance.md, "Spending less per
rotation").

Before its first rotation a campaign pages ``POST /enrollments/query`` (one DPS service
operation per page of up to 1,000 enrollments; the largest page DPS returns is not
documented) and keeps each enrollment with its ETag in the campaign store. The enroll
step of a rotation in the campaign starts from that copy instead of reading the
enrollment: its write is conditional on the copy's ETag, so a copy that has gone stale
(the enrollment changed since the query) is refused (412) and the step reads again and
decides again, as after any lost race. A device the finished pass did not list had no
individual enrollment when it ran (a group member): its enroll step writes nothing.
Should one be created after the pass, the device's registration with the new
certificate fails on it and the device stays on the certificate it has (device
contract), and the rotation fails at its deadline; it never loses a working
certificate. A pass answers for :data:`MAX_AGE` after it finished; later rotations read
the enrollment again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from shared.domain.campaign import EnrollmentPassProgress, KnownEnrollment
from shared.domain.model import (
    CertificateSlot,
    IndividualEnrollment,
    ProvisioningStatus,
)
from shared.ports import CampaignStore, Clock, EnrollmentStore

logger = logging.getLogger(__name__)


#: enrollments asked for per query page (``x-ms-max-item-count``)
PAGE_SIZE = 1000
#: how long a finished pass answers: long enough for a 1,000,000-device campaign at
#: S3x1's pace (18.5 hours), short enough that a wrong "no individual enrollment" (one
#: created after the pass) stops failing that device's rotations within two days
MAX_AGE = timedelta(days=2)


# ---------------------------------------------------------------------- (de)serialization


def _slot_to(slot: CertificateSlot | None) -> dict[str, Any] | None:
    if slot is None:
        return None
    return {
        "thumbprint": slot.thumbprint_sha256,
        "notAfter": slot.not_after.isoformat() if slot.not_after else None,
        "subject": slot.subject,
    }


def _slot_from(raw: Any) -> CertificateSlot | None:
    if not isinstance(raw, dict):
        return None
    not_after = raw.get("notAfter")
    return CertificateSlot(
        thumbprint_sha256=raw.get("thumbprint"),
        not_after=datetime.fromisoformat(not_after) if isinstance(not_after, str) else None,
        subject=raw.get("subject"),
    )


def enrollment_to_json(e: IndividualEnrollment) -> dict[str, Any]:
    """The enrollment as JSON-ready data, its service document and ETag included."""
    return {
        "registrationId": e.registration_id,
        "deviceId": e.device_id,
        "primary": _slot_to(e.primary),
        "secondary": _slot_to(e.secondary),
        "provisioningStatus": e.provisioning_status.value,
        "migrateDeviceData": e.reprovision_migrate_data,
        "updateHubAssignment": e.reprovision_update_hub_assignment,
        "iotHubHostName": e.iot_hub_host_name,
        "etag": e.etag,
        "document": e.document,
    }


def enrollment_from_json(data: dict[str, Any]) -> IndividualEnrollment:
    document = data.get("document")
    return IndividualEnrollment(
        registration_id=str(data["registrationId"]),
        device_id=data.get("deviceId"),
        primary=_slot_from(data.get("primary")),
        secondary=_slot_from(data.get("secondary")),
        provisioning_status=ProvisioningStatus(data.get("provisioningStatus", "enabled")),
        reprovision_migrate_data=bool(data.get("migrateDeviceData", True)),
        reprovision_update_hub_assignment=bool(data.get("updateHubAssignment", True)),
        iot_hub_host_name=data.get("iotHubHostName"),
        etag=data.get("etag"),
        document=document if isinstance(document, dict) else None,
    )


# ---------------------------------------------------------------------- the pass


#: how long a pass found unfinished is not read again by :meth:`EnrollmentPass.known`
UNFINISHED_RECHECK = timedelta(minutes=1)


class EnrollmentPass:
    """Pages the enrollment query into the campaign store, and answers the enroll step."""

    def __init__(
        self,
        store: CampaignStore,
        enrollments: Callable[[], EnrollmentStore],
        clock: Clock,
        call: Callable[..., Any] | None = None,
        page_size: int = PAGE_SIZE,
        max_age: timedelta = MAX_AGE,
    ) -> None:
        self.store = store
        self._enrollments = enrollments  # built on first use (a status read needs no DPS)
        self.clock = clock
        self._call = call or (lambda fn, *args: fn(*args))
        self.page_size = page_size
        self.max_age = max_age
        #: campaigns whose pass is complete (never undone), with when it completed
        self._done: dict[str, datetime] = {}
        #: campaigns whose pass was found unfinished, with when (not asked again for
        #: :data:`UNFINISHED_RECHECK`: the enroll steps read DPS meanwhile)
        self._unfinished: dict[str, datetime] = {}

    def run(self, campaign_id: str, deadline: datetime) -> bool:
        """Read pages until the query is done (True) or ``deadline`` passes (False: the
        next run goes on from the stored continuation)."""
        progress = self._call(self.store.enrollment_pass, campaign_id)
        if progress is not None and progress.done:
            self._finished(campaign_id, progress.at)
            return True
        continuation = progress.continuation if progress is not None else None
        pages = progress.pages if progress is not None else 0
        while True:
            page = self._call(self._enrollments().query_individual, self.page_size, continuation)
            continuation = page.continuation
            pages += 1
            done = continuation is None
            self._call(
                self.store.put_enrollments,
                campaign_id,
                page.items,
                EnrollmentPassProgress(continuation, done, pages, self.clock.now()),
            )
            if done:
                logger.info("campaign %s: %d pages of enrollments read", campaign_id, pages)
                self._finished(campaign_id, self.clock.now())
                return True
            if self.clock.now() >= deadline:
                return False

    def known(self, campaign_ids: list[str], device_id: str) -> KnownEnrollment | None:
        """The device's enrollment as the first complete pass of ``campaign_ids`` read it;
        None when no campaign has one (read the enrollment)."""
        now = self.clock.now()
        for cid in campaign_ids:
            if cid not in self._done:
                seen = self._unfinished.get(cid)
                if seen is not None and now - seen < UNFINISHED_RECHECK:
                    continue
                progress = self._call(self.store.enrollment_pass, cid)
                if progress is None or not progress.done:
                    self._unfinished[cid] = now
                    continue
                self._finished(cid, progress.at)
            if now - self._done[cid] > self.max_age:
                continue  # too old to say a device has no individual enrollment
            return KnownEnrollment(self._call(self.store.enrollment, cid, device_id))
        return None

    def _finished(self, campaign_id: str, at: datetime) -> None:
        self._done[campaign_id] = at
        self._unfinished.pop(campaign_id, None)
