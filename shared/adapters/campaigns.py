"""Azure Table storage adapter of the campaign store.

Campaign table (``<prefix>Campaigns``): ``PK=RK=<campaign id>`` (percent-encoded as every
certroll key is), one row per campaign holding its definition, state and checkpoint as
flat properties. Every write is ETag-checked: a create fails when the row exists, a
replace when someone else wrote first, so two runners of one campaign cannot both
advance its checkpoint. ``list`` scans the table (there are few campaigns).
"""

from __future__ import annotations

from typing import Any

from azure.data.tables import TableEntity, TableServiceClient

from shared.adapters.tables._common import (
    MAX_STRING_CHARS,
    _key,
    _required_dt,
    _TableBase,
    _utc,
)
from shared.domain.campaign import AbortCriteria, Campaign, CampaignState, Checkpoint
from shared.domain.errors import NotFoundError
from shared.ports import CampaignStore

__all__ = ["TableCampaignStore"]


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
            query = "PartitionKey ne ''"
        found = [_entity_to_campaign(e) for e in self._query(query, params, "campaigns")]
        found.sort(key=lambda c: (c.created_at, c.campaign_id), reverse=True)
        return found
