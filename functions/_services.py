"""Access to the wired services (``shared.bootstrap``) and JSON rendering of results."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from shared.domain.model import ConnectionFailure, Trigger
from shared.ports import AuditLog
from shared.render import to_jsonable as to_jsonable  # one renderer for API and CLI


class RotationApi(Protocol):
    """The rotation service methods the triggers call."""

    def on_twin_reported(
        self, device_id: str, reported_x509: dict[str, Any], twin_version: int | None = None
    ) -> Any: ...

    def on_connection_failure(self, failure: ConnectionFailure) -> Any: ...

    def on_device_connected(self, device_id: str, at: datetime) -> Any: ...

    def on_device_created(self, device_id: str) -> Any: ...

    def start_renewal(self, device_id: str, reason: Trigger, actor: str) -> Any: ...

    def sweep(self, *, dry_run: bool = False, batch_size: int = 100) -> Any: ...

    def process_batch(self, message: dict[str, Any]) -> Any: ...

    def disallow(self, device_id: str, reason: str, actor: str) -> Any: ...

    def allow(self, device_id: str, actor: str, csr_pem: str | None = None) -> Any: ...

    def status(self, device_id: str) -> Any: ...


def services() -> Any:
    """The per-worker services (``shared.bootstrap.get_services()``)."""
    from shared.bootstrap import get_services  # imported late: wiring reads settings

    return get_services()


def rotation() -> RotationApi:
    svc: RotationApi = services().rotation
    return svc


def audit_log() -> AuditLog:
    log: AuditLog = services().audit
    return log
