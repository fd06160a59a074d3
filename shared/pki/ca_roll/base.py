"""What every CA-roll step uses: its dependencies, its result, and the record, audit,
enrollment-group and CA-set helpers (:class:`_RollBase`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.domain.ca_roll import (
    CaCertificateService,
    CaEntry,
    CampaignRunner,
    CaRollRecord,
    CaRollStore,
    CaStatus,
    RollStep,
)
from shared.domain.campaign import Campaign
from shared.domain.certs import sha256_thumbprint
from shared.domain.errors import ConcurrencyError, InvalidRequestError
from shared.domain.model import AuditEvent, CertificateSlot, EnrollmentGroup
from shared.pki.ca_roll.cas import (
    DEFAULT_CA_NAME,
    CaSet,
    PublishedCa,
    _certificate,
    _pem,
    ca_names,
    published_ca,
)
from shared.pki.ca_roll.issuer import RollingIssuer
from shared.pki.ca_roll.keys import IssuingKeys
from shared.pki.ca_roll.root import LocalRoot
from shared.ports import (
    AuditLog,
    CertificateLedger,
    Clock,
    CrlPublisher,
    DeviceRegistry,
    EnrollmentStore,
)

__all__ = ["CaRollDeps", "RollResult"]


@dataclass
class CaRollDeps:
    store: CaRollStore
    keys: IssuingKeys
    issuer: RollingIssuer
    enrollments: EnrollmentStore
    registry: DeviceRegistry
    ledger: CertificateLedger
    audit: AuditLog
    crl_publisher: CrlPublisher
    clock: Clock
    campaigns: CampaignRunner
    dps_certificates: CaCertificateService | None = None
    hub_certificates: CaCertificateService | None = None
    local_root: Callable[[], LocalRoot | None] = lambda: None
    backdate: timedelta = timedelta(seconds=300)
    base_name: str = DEFAULT_CA_NAME


@dataclass
class RollResult:
    """What a step did (``changed`` False: it had been done; the record is returned)."""

    step: RollStep
    changed: bool
    record: CaRollRecord
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "changed": self.changed,
            "detail": self.detail,
            "roll": self.record.to_dict(),
        }


class _RollBase:
    """The roll's record, audit and the enrollment-group and CA-set helpers its steps share."""

    def __init__(self, deps: CaRollDeps) -> None:
        self.deps = deps

    # ----------------------------------------------------------------- record

    def status(self) -> CaRollRecord:
        record = self.deps.store.get()
        return record if record is not None else self._initial_record()

    def _initial_record(self) -> CaRollRecord:
        """A record describing the CA of the settings (generation 1), before any roll."""
        authority = self.deps.issuer.cas.active.authority
        crl_name, cert_name, service_name = ca_names(1, self.deps.base_name)
        first = CaEntry(
            ca_id="issuing-1",
            generation=1,
            key_backend=self.deps.keys.backend,
            key_ref="settings",
            key_id=authority.key_id,
            status=CaStatus.ACTIVE,
            crl_name=crl_name,
            cert_name=cert_name,
            service_name=service_name,
            certificate_pem=_pem(authority.certificate),
            created_at=authority.certificate.not_valid_before_utc,
            activated_at=authority.certificate.not_valid_before_utc,
        )
        return CaRollRecord(cas=[first], active_ca_id=None)

    def _save(self, record: CaRollRecord, actor: str) -> CaRollRecord:
        record.updated_at = self.deps.clock.now()
        record.updated_by = actor
        return self.deps.store.put(record)

    def _audit(self, step: RollStep, outcome: str, actor: str, **detail: Any) -> None:
        self.deps.audit.append(
            AuditEvent(
                action=f"ca_roll_{step.value}",
                outcome=outcome,
                actor=actor,
                detail=detail,
                at=self.deps.clock.now(),
            )
        )

    def _current_ca_id(self, record: CaRollRecord) -> str:
        return record.active_ca_id or "issuing-1"

    # ----------------------------------------------------------------- helpers

    def _groups(self) -> list[EnrollmentGroup]:
        groups: list[EnrollmentGroup] = []
        continuation: str | None = None
        while True:
            page = self.deps.enrollments.query_groups(100, continuation)
            groups.extend(page.items)
            continuation = page.continuation
            if not continuation:
                return groups

    def _set_group(self, group_id: str, primary: CaEntry, secondary: CaEntry | None) -> bool:
        """Write ``primary``/``secondary`` into the group's slots (certificates or CA
        references, whichever the group uses); False when they were there."""
        for _attempt in range(8):
            group = self.deps.enrollments.get_group(group_id)
            by_reference = bool(group.ca_primary or group.ca_secondary)
            if by_reference:
                want = (primary.service_name, secondary.service_name if secondary else None)
                if (group.ca_primary, group.ca_secondary) == want:
                    return False
                group.ca_primary, group.ca_secondary = want
            else:
                want_tp = (_thumb(primary), _thumb(secondary) if secondary else None)
                have = tuple(
                    s.thumbprint_sha256 if s else None for s in (group.primary, group.secondary)
                )
                if have == want_tp:
                    return False
                group.primary = CertificateSlot(pem=primary.certificate_pem)
                group.secondary = (
                    CertificateSlot(pem=secondary.certificate_pem) if secondary else None
                )
            try:
                self.deps.enrollments.put_group(group)
                return True
            except ConcurrencyError:
                continue
        raise ConcurrencyError(f"enrollment group {group_id} kept changing")

    def _ca_set(self, record: CaRollRecord) -> CaSet:
        current = self.deps.issuer.cas
        known = {p.ca_id: p for p in (current.active, *current.others)}
        live: dict[str, PublishedCa] = {}
        for ca in record.cas:
            if not ca.live:
                continue
            live[ca.ca_id] = known.get(ca.ca_id) or published_ca(
                ca, self.deps.keys, self.deps.crl_publisher, current.active.authority.root
            )
        active = live[_required(record.active_ca_id, "the active CA")]
        return CaSet(active, tuple(p for cid, p in live.items() if cid != active.ca_id))


def _campaign_detail(campaign: Campaign) -> dict[str, Any]:
    cp = campaign.checkpoint
    return {
        "campaign": campaign.campaign_id,
        "state": campaign.state.value,
        "enqueued": cp.enqueued,
        "completed": cp.completed,
        "failed": cp.failed,
    }


def _thumb(entry: CaEntry) -> str:
    return sha256_thumbprint(_certificate(entry.certificate_pem, entry.ca_id))


def _required(value: str | None, what: str) -> str:
    if not value:
        raise InvalidRequestError("ca_roll_record_invalid", f"{what} is missing from the record")
    return value
