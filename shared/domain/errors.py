"""Typed errors of certroll's domain and ports.

Adapters translate every service or SDK failure into one of these, so the rotation
service and the triggers never see a bare SDK exception. ``ValueError`` and
``TypeError`` keep their usual Python meaning (a programming error).
"""

from __future__ import annotations


class CertrollError(Exception):
    """Base class of every error certroll raises on purpose."""


class NotFoundError(CertrollError):
    """The named resource (enrollment, device, certificate, record) does not exist."""


class ConflictError(CertrollError):
    """The resource already exists (create of something present)."""


class ConcurrencyError(CertrollError):
    """An ETag (If-Match) check failed: someone else changed the resource first."""


class ThrottledError(CertrollError):
    """The service answered 429/503; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobQuotaExceededError(ThrottledError):
    """The hub already runs as many jobs as its tier allows (429004
    ThrottlingMaxActiveJobCountExceeded: at most 1 concurrent job on Free and S1, 5 on S2,
    10 on S3). Wait for a job to finish, or reach the devices with direct methods."""


class DeviceOfflineError(CertrollError):
    """A direct method could not reach the device (hub 404103 DeviceNotOnline / timeout)."""


class ServiceError(CertrollError):
    """Any other failure of a remote service, with its status code when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidRequestError(CertrollError):
    """Input from outside (API body, event, CLI argument) is malformed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CsrRejectedError(CertrollError):
    """A CSR failed the issuing policy; nothing was issued.

    ``code`` is one of :data:`CSR_REJECTION_CODES` (documented in docs/issuing.md).
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in CSR_REJECTION_CODES:
            raise ValueError(f"unknown CSR rejection code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DeviceDisallowedError(CertrollError):
    """The device is disallowed; certroll will not issue to it or reconcile it."""


class SigningError(CertrollError):
    """The signing key (HSM, Key Vault, file) failed to produce a signature."""


CSR_REJECTION_CODES: frozenset[str] = frozenset(
    {
        "csr_malformed",
        "csr_signature_invalid",
        "subject_mismatch",
        "key_not_allowed",
        "signature_hash_not_allowed",
        "extension_not_allowed",
        "san_not_allowed",
        "csr_too_large",
        "device_disallowed",
        "device_id_invalid",
        "key_reused",
    }
)
