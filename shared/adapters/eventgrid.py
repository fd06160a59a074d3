"""Event Grid adapter: certroll's outbound domain events on a custom topic.

Events use the Event Grid schema: ``eventType`` ``Certroll.<Type>`` (for example
``Certroll.CertificateIssued``), ``dataVersion`` ``1.0``, ``subject`` ``devices/<id>``,
``data`` the event's data object. The topic is authenticated with the Function App's
managed identity ("EventGrid Data Sender" role) in Azure; an ``AzureKeyCredential`` works
too (tests, quick starts).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials import AzureKeyCredential, AzureSasCredential, TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from shared.adapters.retry_after import retry_after_seconds
from shared.domain.errors import ServiceError, ThrottledError
from shared.domain.model import DomainEvent
from shared.ports import EventSink
from shared.settings import Settings

logger = logging.getLogger(__name__)

#: The topic input schema these events need (infra/modules/eventgrid.bicep sets it): the
#: publisher sends ``EventGridEvent``s, which a ``CloudEventSchemaV1_0`` topic refuses.
INPUT_SCHEMA = "EventGridSchema"
EVENT_TYPE_PREFIX = "Certroll."
DATA_VERSION = "1.0"
#: Events per request; Event Grid takes up to 1 MB per request and certroll's are small.
BATCH_SIZE = 100

EventGridCredential = AzureKeyCredential | AzureSasCredential | TokenCredential


def to_eventgrid_event(event: DomainEvent) -> EventGridEvent:
    if not event.event_type or not event.subject:
        raise ValueError("a domain event needs event_type and subject")
    event_type = event.event_type
    if not event_type.startswith(EVENT_TYPE_PREFIX):
        event_type = EVENT_TYPE_PREFIX + event_type
    at = event.at or datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError("DomainEvent.at must be timezone-aware (UTC)")
    return EventGridEvent(
        subject=event.subject,
        event_type=event_type,
        data=dict(event.data),
        data_version=DATA_VERSION,
        id=event.event_id or str(uuid.uuid4()),
        event_time=at.astimezone(UTC),
    )


def _batches(items: Sequence[EventGridEvent], size: int) -> Iterator[list[EventGridEvent]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class EventGridSink(EventSink):
    """Publishes :class:`DomainEvent` batches to an Event Grid custom topic.

    ``retry_total`` overrides azure-core's retry count (default: the SDK's policy, which
    honours ``Retry-After`` on 429/503); what still fails maps to ThrottledError or
    ServiceError.
    """

    def __init__(
        self,
        endpoint: str,
        credential: EventGridCredential | None = None,
        *,
        retry_total: int | None = None,
        **client_kwargs: Any,
    ) -> None:
        if not endpoint:
            raise ValueError("an Event Grid topic endpoint is required")
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self.endpoint = endpoint
        self._retry_total = retry_total
        self._client = EventGridPublisherClient(endpoint, credential, **client_kwargs)

    def publish(self, events: list[DomainEvent]) -> None:
        converted = [to_eventgrid_event(e) for e in events]
        options: dict[str, Any] = {}
        if self._retry_total is not None:
            options["retry_total"] = self._retry_total
        for batch in _batches(converted, BATCH_SIZE):
            try:
                self._client.send(batch, **options)
            except HttpResponseError as exc:
                status = exc.status_code
                if status in (429, 503):
                    headers = getattr(exc.response, "headers", None)
                    raise ThrottledError(
                        f"Event Grid is throttling (HTTP {status})",
                        retry_after=retry_after_seconds(headers, 1.0),
                    ) from exc
                if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
                    raise ServiceError(
                        f"Event Grid refused the credentials (HTTP {status})", status
                    ) from exc
                raise ServiceError(f"Event Grid answered HTTP {status}", status) from exc
            except AzureError as exc:
                raise ServiceError(f"Event Grid is unreachable: {exc.message}") from exc
            logger.info(
                "published %d event(s) to Event Grid: %s",
                len(batch),
                ",".join(sorted({e.event_type for e in batch})),
            )


def event_sink_from_settings(settings: Settings) -> EventGridSink | None:
    """The Event Grid sink when ``CERTROLL_EVENTGRID_TOPIC_ENDPOINT`` is set, else None.

    Authenticates with the managed identity (``DefaultAzureCredential``).
    """
    endpoint = settings.get("CERTROLL_EVENTGRID_TOPIC_ENDPOINT").strip()
    return EventGridSink(endpoint) if endpoint else None
