"""What the Table storage adapters share: key encoding, datetime conversion, the table
made on first use, point reads, queries and ETag-checked writes (``_TableBase``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    TableClient,
    TableEntity,
    TableServiceClient,
    UpdateMode,
)

from shared.adapters.storage_clients import raise_storage_error
from shared.domain.errors import ConcurrencyError, ConflictError

logger = logging.getLogger(__name__)

#: creates ask the service not to echo the entity back (``Prefer: return-no-content``):
#: the adapters use only the new ETag, which comes in a header either way
_NO_ECHO: dict[str, Any] = {"response_preference": "return-no-content"}

#: Table storage keeps at most 64 KiB per string property (UTF-16): 32 Ki characters.
MAX_STRING_CHARS = 32_000


def _key(value: str) -> str:
    """``value`` made safe for PartitionKey/RowKey (no / \\ # ? % ~ or control chars)."""
    if not value:
        raise ValueError("a table key must not be empty")
    return quote(value, safe="-._!*(),:=@$'").replace("~", "%7E")


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got a naive datetime")
    return value.astimezone(UTC)


def _plain(value: Any) -> datetime | None:
    """A service datetime as a plain timezone-aware UTC ``datetime``."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def _required_dt(value: Any) -> datetime:
    result = _plain(value)
    if result is None:
        raise TypeError("a required datetime property is missing")
    return result


def _ensure_table(service: TableServiceClient, table_name: str) -> TableClient:
    try:
        service.create_table(table_name)
        logger.info("created table %s", table_name)
    except ResourceExistsError:
        pass
    except AzureError as exc:
        raise_storage_error(exc, f"create table {table_name}")
    return service.get_table_client(table_name)


class _TableBase:
    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        self._service = service
        self.table_name = table_name
        self._clients: dict[str, TableClient] = {}
        self._client_lock = threading.Lock()

    def _client_of(self, table_name: str) -> TableClient:
        """The client of ``table_name``, the table made on first use."""
        client = self._clients.get(table_name)
        if client is None:
            with self._client_lock:
                client = self._clients.get(table_name)
                if client is None:
                    client = _ensure_table(self._service, table_name)
                    self._clients[table_name] = client
        return client

    @property
    def _table(self) -> TableClient:
        return self._client_of(self.table_name)

    def _point_read(
        self, pk: str, rk: str, what: str, table: TableClient | None = None
    ) -> TableEntity | None:
        try:
            return (table or self._table).get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise_storage_error(exc, what)

    def _query(
        self,
        query_filter: str,
        parameters: dict[str, Any],
        what: str,
        page: int = 1000,
        table: TableClient | None = None,
    ) -> Iterator[TableEntity]:
        try:
            yield from (table or self._table).query_entities(
                query_filter, parameters=parameters, results_per_page=page
            )
        except AzureError as exc:
            raise_storage_error(exc, what)

    def _create_or_replace(
        self,
        entity: Mapping[str, Any],
        etag: str | None,
        what: str,
        *,
        exists: str | None = None,
        changed: str | None = None,
    ) -> dict[str, Any]:
        """Create ``entity`` (``etag`` None) or replace it if unchanged since ``etag`` was
        read; the response metadata (the new ETag under ``etag``). ConflictError when a
        create finds the row (``exists``, by default "<what> exists"), ConcurrencyError
        when a replace finds it changed or gone (``changed``, "<what> changed")."""
        try:
            if etag is None:
                return self._table.create_entity(entity, **_NO_ECHO)
            return self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceExistsError as exc:
            raise ConflictError(exists or f"{what} exists") from exc
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ConcurrencyError(changed or f"{what} changed") from exc
        except AzureError as exc:
            raise_storage_error(exc, what)
