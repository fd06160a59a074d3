"""Azure Table storage adapter of the campaign store.

Campaign table (``<prefix>Campaigns``): ``PK=RK=<campaign id>`` (percent-encoded as every
certroll key is), one row per campaign holding its definition, state and checkpoint as
flat properties. Every write is ETag-checked: a create fails when the row exists, a
replace when someone else wrote first, so two runners of one campaign cannot both
advance its checkpoint. ``list`` scans the table (there are few campaigns).

The campaign's devices live in the same table: ``PK=~m-<campaign id>``, ``RK=<device
id>``, one property ``outcome`` (``pending`` until the rotation ends). Pages of devices go
in as entity-group transactions of up to 100 inserts (one storage request per 100
devices); a transaction that meets an existing row is retried one insert at a time, so a
page read again keeps every outcome already set. An outcome is set with If-Match on the
pending row: a redelivered rotation finds it set and counts nothing.

The campaign's read of the DPS enrollment query (``campaign_enrollments.py``):
``PK=~e-<campaign id>``, ``RK=<registration id>``, one property ``enrollment`` (the
enrollment, its ETag and service document as JSON; a few KB, under the 64 KiB limit of a
string property), upserted 100 per entity-group transaction; the pass's progress in
``RK=~pass`` (continuation, done, pages, at).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    TableEntity,
    TableServiceClient,
    TableTransactionError,
    UpdateMode,
)

from shared.adapters.storage_clients import raise_storage_error
from shared.adapters.tables._common import (
    _NO_ECHO,
    MAX_STRING_CHARS,
    _key,
    _required_dt,
    _TableBase,
    _utc,
)
from shared.domain.campaign import (
    OUTCOMES,
    PENDING,
    AbortCriteria,
    Campaign,
    CampaignState,
    Checkpoint,
    EnrollmentPassProgress,
)
from shared.domain.campaign_enrollments import enrollment_from_json, enrollment_to_json
from shared.domain.errors import NotFoundError
from shared.domain.model import IndividualEnrollment
from shared.ports import CampaignStore

__all__ = ["TableCampaignStore"]

#: the row of the enrollment pass's progress (``~`` sorts after every percent-encoded id)
_PASS_ROW = "~pass"


def _text(value: str | None, name: str) -> str | None:
    if value is not None and len(value) > MAX_STRING_CHARS:
        raise ValueError(f"{name} of {len(value)} characters exceeds {MAX_STRING_CHARS}")
    return value


def _campaign_to_entity(c: Campaign) -> dict[str, Any]:
    key = _key(c.campaign_id)
    cp = c.checkpoint
    return {
        "PartitionKey": key,
        "RowKey": key,
        "campaign_id": c.campaign_id,
        "query": _text(c.query, "query"),
        "reason": c.reason,
        "state": CampaignState(c.state).value,
        "created_at": _utc(c.created_at, "created_at"),
        "updated_at": _utc(c.updated_at, "updated_at"),
        "created_by": c.created_by,
        "abort_min_executed": c.abort_criteria.min_executed,
        "abort_failure_percentage": float(c.abort_criteria.failure_percentage),
        "continuation": _text(cp.continuation, "continuation"),
        "pages_read": cp.pages_read,
        "query_done": cp.query_done,
        "enqueued": cp.enqueued,
        "completed": cp.completed,
        "failed": cp.failed,
        "skipped": cp.skipped,
        "devices_expected": c.devices_expected,
        "rate_per_min": None if c.rate_per_min is None else float(c.rate_per_min),
        "note": _text(c.note, "note"),
    }


def _int(value: Any) -> int:
    return int(getattr(value, "value", value) or 0)


def _entity_to_campaign(e: TableEntity) -> Campaign:
    expected = e.get("devices_expected")
    rate = e.get("rate_per_min")
    campaign = Campaign(
        campaign_id=str(e["campaign_id"]),
        query=str(e["query"]),
        reason=str(e["reason"]),
        created_at=_required_dt(e["created_at"]),
        updated_at=_required_dt(e["updated_at"]),
        created_by=str(e["created_by"]),
        state=CampaignState(e["state"]),
        abort_criteria=AbortCriteria(
            min_executed=_int(e["abort_min_executed"]),
            failure_percentage=float(e["abort_failure_percentage"]),
        ),
        checkpoint=Checkpoint(
            continuation=e.get("continuation"),
            pages_read=_int(e.get("pages_read")),
            query_done=bool(e.get("query_done")),
            enqueued=_int(e.get("enqueued")),
            completed=_int(e.get("completed")),
            failed=_int(e.get("failed")),
            skipped=_int(e.get("skipped")),
        ),
        devices_expected=None if expected is None else _int(expected),
        rate_per_min=None if rate is None else float(rate),
        note=e.get("note"),
    )
    etag = e.metadata.get("etag")
    campaign.etag = str(etag) if etag else None
    return campaign


class TableCampaignStore(_TableBase, CampaignStore):
    """One row per campaign (``PK=RK=<id>``) with ETag-checked writes."""

    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        super().__init__(service, table_name)

    def get(self, campaign_id: str) -> Campaign:
        if not campaign_id:
            raise NotFoundError("no campaign without an id")
        key = _key(campaign_id)
        entity = self._point_read(key, key, f"campaign {campaign_id}")
        if entity is None:
            raise NotFoundError(f"campaign {campaign_id} not found")
        return _entity_to_campaign(entity)

    def put(self, campaign: Campaign) -> Campaign:
        entity = {k: v for k, v in _campaign_to_entity(campaign).items() if v is not None}
        meta = self._create_or_replace(entity, campaign.etag, f"campaign {campaign.campaign_id}")
        stored = _entity_to_campaign(TableEntity(entity))
        stored.etag = str(meta["etag"])
        return stored

    def list(self, states: set[CampaignState] | None = None) -> list[Campaign]:
        params: dict[str, Any] = {}
        if states is not None:
            if not states:
                return []
            ors = []
            for i, state in enumerate(sorted(CampaignState(s).value for s in states)):
                params[f"s{i}"] = state
                ors.append(f"state eq @s{i}")
            query = " or ".join(ors)
        else:
            query = "state ne ''"  # campaign rows only (device rows have no state)
        found = [_entity_to_campaign(e) for e in self._query(query, params, "campaigns")]
        found.sort(key=lambda c: (c.created_at, c.campaign_id), reverse=True)
        return found

    # ------------------------------------------------------------------ devices

    @staticmethod
    def _members_pk(campaign_id: str) -> str:
        return "~m-" + _key(campaign_id)

    def add_devices(self, campaign_id: str, device_ids: Sequence[str]) -> int:
        pk = self._members_pk(campaign_id)
        ids = list(dict.fromkeys(device_ids))
        new = 0
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            ops = [
                ("create", {"PartitionKey": pk, "RowKey": _key(d), "outcome": PENDING})
                for d in chunk
            ]
            try:
                self._table.submit_transaction(ops)  # type: ignore[arg-type]
                new += len(chunk)
                continue
            except TableTransactionError:
                pass  # some exist already: one at a time
            except AzureError as exc:
                raise_storage_error(exc, f"campaign {campaign_id} devices")
            for _, entity in ops:
                try:
                    self._table.create_entity(entity, **_NO_ECHO)
                    new += 1
                except ResourceExistsError:
                    pass
                except AzureError as exc:
                    raise_storage_error(exc, f"campaign {campaign_id} device")
        return new

    def device_outcome(self, campaign_id: str, device_id: str) -> str | None:
        entity = self._point_read(
            self._members_pk(campaign_id), _key(device_id), f"campaign {campaign_id} device"
        )
        return None if entity is None else str(entity.get("outcome") or PENDING)

    def record_outcome(self, campaign_id: str, device_id: str, outcome: str) -> bool:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        pk, rk = self._members_pk(campaign_id), _key(device_id)
        what = f"campaign {campaign_id} device {device_id}"
        for _ in range(4):
            entity = self._point_read(pk, rk, what)
            if entity is None or (entity.get("outcome") or PENDING) != PENDING:
                return False
            try:
                self._table.update_entity(
                    {"PartitionKey": pk, "RowKey": rk, "outcome": outcome},
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return True
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # someone else set it: read again
            except AzureError as exc:
                raise_storage_error(exc, what)
        return False

    # ------------------------------------------------------------------ enrollment pass

    @staticmethod
    def _enrollments_pk(campaign_id: str) -> str:
        return "~e-" + _key(campaign_id)

    def put_enrollments(
        self,
        campaign_id: str,
        enrollments: Sequence[IndividualEnrollment],
        progress: EnrollmentPassProgress,
    ) -> None:
        pk = self._enrollments_pk(campaign_id)
        what = f"campaign {campaign_id} enrollments"
        rows = [
            {
                "PartitionKey": pk,
                "RowKey": _key(e.registration_id),
                "enrollment": json.dumps(enrollment_to_json(e), separators=(",", ":")),
            }
            for e in enrollments
        ]
        try:
            for start in range(0, len(rows), 100):  # one entity-group transaction per 100
                ops = [
                    ("upsert", row, {"mode": UpdateMode.REPLACE})
                    for row in rows[start : start + 100]
                ]
                self._table.submit_transaction(ops)  # type: ignore[arg-type]
            self._table.upsert_entity(
                {
                    "PartitionKey": pk,
                    "RowKey": _PASS_ROW,
                    "continuation": progress.continuation or "",
                    "done": progress.done,
                    "pages": progress.pages,
                    "at": progress.at,
                },
                mode=UpdateMode.REPLACE,
            )
        except AzureError as exc:
            raise_storage_error(exc, what)

    def enrollment_pass(self, campaign_id: str) -> EnrollmentPassProgress | None:
        entity = self._point_read(
            self._enrollments_pk(campaign_id), _PASS_ROW, f"campaign {campaign_id} pass"
        )
        if entity is None:
            return None
        return EnrollmentPassProgress(
            continuation=str(entity.get("continuation") or "") or None,
            done=bool(entity.get("done")),
            pages=_int(entity.get("pages")),
            at=_required_dt(entity.get("at")),
        )

    def enrollment(self, campaign_id: str, registration_id: str) -> IndividualEnrollment | None:
        entity = self._point_read(
            self._enrollments_pk(campaign_id),
            _key(registration_id),
            f"campaign {campaign_id} enrollment {registration_id}",
        )
        if entity is None:
            return None
        return enrollment_from_json(json.loads(str(entity["enrollment"])))

    def count_outcomes(self, campaign_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        try:
            rows = self._table.query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": self._members_pk(campaign_id)},
                select=["outcome"],
                results_per_page=1000,
            )
            for row in rows:
                outcome = str(row.get("outcome") or PENDING)
                counts[outcome] = counts.get(outcome, 0) + 1
        except AzureError as exc:
            raise_storage_error(exc, f"campaign {campaign_id} devices")
        return counts
