"""Access to the wired services (``shared.bootstrap``) and JSON rendering of results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.ports import AuditLog
from shared.render import to_jsonable as to_jsonable  # one renderer for API and CLI

if TYPE_CHECKING:
    from shared.bootstrap import Services
    from shared.domain.rotation import RotationService


def services() -> Services:
    """The per-worker services (``shared.bootstrap.get_services()``)."""
    from shared.bootstrap import get_services  # imported late: wiring reads settings

    return get_services()


def rotation() -> RotationService:
    return services().rotation


def audit_log() -> AuditLog:
    return services().audit
