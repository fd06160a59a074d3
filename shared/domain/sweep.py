"""Results of the daily sweep and of the queue worker (plain, JSON-ready data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SweepPlan:
    """What one sweep found and (unless ``dry_run``) did.

    Categories hold device ids: ``expiring`` (renewal due), ``overdue`` (certificate
    past notAfter), ``stuck`` (rotation past its deadline), ``failed`` (failed rotations
    to retry), ``silent`` (certroll's record says the certificate is past due but the
    twin no longer reports one, or the rotation has waited on the device for a long time).
    """

    at: datetime
    dry_run: bool
    expiring: list[str] = field(default_factory=list)
    overdue: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    ca_expiring: list[dict[str, Any]] = field(default_factory=list)
    crl_url: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pages: int = 0  # twin query pages read by this run
    continuation: str | None = None  # set when this run stopped early: a sweep message goes on

    CATEGORIES = ("expiring", "overdue", "stuck", "failed", "silent")

    def device_ids(self) -> list[str]:
        """Every device the sweep acts on, each once, in category order."""
        seen: dict[str, None] = {}
        for name in self.CATEGORIES:
            for device_id in getattr(self, name):
                seen.setdefault(device_id, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "dryRun": self.dry_run,
            "counts": {name: len(getattr(self, name)) for name in self.CATEGORIES}
            | {"caExpiring": len(self.ca_expiring), "messages": len(self.messages)},
            "devices": {name: list(getattr(self, name)) for name in self.CATEGORIES},
            "caExpiring": [dict(item) for item in self.ca_expiring],
            "crlUrl": self.crl_url,
            "messages": [dict(m) for m in self.messages],
            "problems": list(self.problems),
            "pages": self.pages,
            "continuation": self.continuation,
        }


@dataclass
class BatchResult:
    """What the queue worker did with one ``rotate`` message."""

    started: list[str] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    reprovision_job: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": list(self.started),
            "advanced": list(self.advanced),
            "skipped": dict(self.skipped),
            "errors": dict(self.errors),
            "reprovisionJob": self.reprovision_job,
        }
