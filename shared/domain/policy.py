"""Renewal timing and the rotation service's tunables (pure: no I/O).

A certificate is *due* when ``now >= not_before + f * lifetime`` where ``f`` is the
configured renewal fraction moved by a per-device jitter: ``f = fraction + jitter * u``
with ``u`` in [-1, 1] taken from the SHA-256 of the device id. The jitter is therefore
the same on every evaluation (the decision never flaps) but differs between devices,
so a fleet born on one day spreads its renewals over ``2 * jitter * lifetime``.
A certificate is *overdue* once ``now >= not_after``.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.domain.retry import RetryPolicy

if TYPE_CHECKING:
    from shared.settings import Settings

#: Limits that keep the renewal point inside the certificate's lifetime.
MIN_FRACTION = 0.05
MAX_FRACTION = 0.98


class Renewal(enum.StrEnum):
    NOT_DUE = "not_due"
    DUE = "due"
    OVERDUE = "overdue"


def device_jitter_unit(device_id: str) -> float:
    """A number in [-1, 1] fixed for ``device_id``."""
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / float(2**64 - 1) * 2.0 - 1.0


#: concurrent hub jobs per IoT Hub SKU ("IoT Hub quotas and throttling", other limits:
#: "Maximum concurrent jobs is 1 (for Free and S1), 5 (for S2), and 10 (for S3)"; jobs are
#: not offered on the basic tiers)
CONCURRENT_JOBS_BY_SKU: dict[str, int] = {
    "F1": 1, "S1": 1, "S2": 5, "S3": 10, "B1": 0, "B2": 0, "B3": 0,
}  # fmt: skip


def concurrent_jobs_of_tier(sku: str) -> int:
    """The hub's concurrent-job limit for its SKU name (``S1``...); ValueError if unknown."""
    try:
        return CONCURRENT_JOBS_BY_SKU[sku.strip().upper()]
    except KeyError:
        known = ", ".join(CONCURRENT_JOBS_BY_SKU)
        raise ValueError(f"IoT Hub SKU {sku!r} is not one of {known}") from None


@dataclass(frozen=True)
class RotationPolicy:
    """Timing and limits of rotations. Build from app settings with :meth:`from_settings`."""

    renewal_fraction: float = 0.6667
    renewal_jitter: float = 0.05
    validity: timedelta = timedelta(days=30)
    #: how long a rotation may sit in one state before the sweep resumes it
    rotation_deadline: timedelta = timedelta(hours=24)
    #: certroll's own work on a received CSR (issue, enroll, deliver, reprovision) is one
    #: invocation: a record still in ``csr_received`` after the function timeout
    #: (host.json ``functionTimeout``) was left by an invocation that died
    work_timeout: timedelta = timedelta(minutes=10)
    #: how long to wait for confirmation after ``reprovision`` was sent
    confirm_timeout: timedelta = timedelta(hours=1)
    ca_warning: timedelta = timedelta(days=90)
    #: a second reconcile of the same device within this interval is skipped
    reconcile_interval: timedelta = timedelta(minutes=15)
    offline_backoff_base: timedelta = timedelta(minutes=5)
    offline_backoff_cap: timedelta = timedelta(hours=12)
    #: at least this many devices due for ``reprovision`` at once go through a hub job
    bulk_threshold: int = 50
    #: jobs the hub runs at once (IoT Hub quotas: 1 on Free and S1, 5 on S2, 10 on S3;
    #: none on the basic tiers): certroll never schedules beyond it
    max_concurrent_jobs: int = 1
    key_algorithm: str = "ec-p256"
    #: the issuing policy's CSR size limit (``CERTROLL_CSR_MAX_BYTES``): a larger answer
    #: fails its request at once instead of being bound to it
    csr_max_bytes: int = 4096
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not MIN_FRACTION <= self.renewal_fraction <= MAX_FRACTION:
            raise ValueError(
                f"renewal fraction {self.renewal_fraction} must be within "
                f"{MIN_FRACTION}..{MAX_FRACTION}"
            )
        if not 0 <= self.renewal_jitter < 0.5:
            raise ValueError(f"renewal jitter {self.renewal_jitter} must be within 0..0.5")
        if self.validity <= timedelta(0) or self.rotation_deadline <= timedelta(0):
            raise ValueError("validity and rotation deadline must be positive")
        if self.bulk_threshold < 1:
            raise ValueError("bulk threshold must be at least 1")
        if self.max_concurrent_jobs < 0:
            raise ValueError("max concurrent jobs must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> RotationPolicy:
        return cls(
            renewal_fraction=settings.float("CERTROLL_RENEWAL_FRACTION"),
            renewal_jitter=settings.float("CERTROLL_RENEWAL_JITTER"),
            validity=timedelta(days=settings.int("CERTROLL_CERT_VALIDITY_DAYS")),
            rotation_deadline=timedelta(hours=settings.float("CERTROLL_ROTATION_DEADLINE_HOURS")),
            ca_warning=timedelta(days=settings.int("CERTROLL_CA_WARNING_DAYS")),
            max_concurrent_jobs=concurrent_jobs_of_tier(settings.get("CERTROLL_HUB_TIER")),
            csr_max_bytes=settings.int("CERTROLL_CSR_MAX_BYTES"),
        )

    # ------------------------------------------------------------------ timing

    def fraction_for(self, device_id: str) -> float:
        shifted = self.renewal_fraction + self.renewal_jitter * device_jitter_unit(device_id)
        return min(MAX_FRACTION, max(MIN_FRACTION, shifted))

    def renewal_time(self, device_id: str, not_before: datetime, not_after: datetime) -> datetime:
        """When the device's certificate valid ``not_before..not_after`` falls due."""
        if not_after <= not_before:
            return not_before
        return not_before + (not_after - not_before) * self.fraction_for(device_id)

    def decide(
        self, device_id: str, not_before: datetime, not_after: datetime, now: datetime
    ) -> Renewal:
        if now >= not_after:
            return Renewal.OVERDUE
        if now >= self.renewal_time(device_id, not_before, not_after):
            return Renewal.DUE
        return Renewal.NOT_DUE

    def sweep_horizon(self, now: datetime) -> datetime:
        """A ``notAfter`` bound that includes every certificate that may be due now.

        With the longest lifetime the policy issues, a certificate can be due at most
        ``(1 - min fraction) * validity`` before it expires; one day is added for
        certificates a little longer than the policy (older policy, foreign issuer).
        """
        lowest = max(MIN_FRACTION, self.renewal_fraction - self.renewal_jitter)
        return now + self.validity * (1 - lowest) + timedelta(days=1)
