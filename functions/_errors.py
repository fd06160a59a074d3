"""How the triggers treat the typed errors of the rotation service.

Event triggers skip an event whose problem is permanent (bad input, unknown or
disallowed device) and re-raise transient failures so the runtime retries the batch
(the service is idempotent, so events handled before the failure are no-ops on retry).
The HTTP API maps each error to a status code and a JSON error body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    DeviceOfflineError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    SigningError,
    ThrottledError,
)

#: Errors that say "this event can never succeed": log it and go on with the next one.
PERMANENT_ERRORS: tuple[type[CertrollError], ...] = (
    InvalidRequestError,
    NotFoundError,
    DeviceDisallowedError,
    CsrRejectedError,
    ConflictError,
)

#: Errors that say "try again later": re-raise so the runtime retries.
TRANSIENT_ERRORS: tuple[type[CertrollError], ...] = (
    ThrottledError,
    ConcurrencyError,
    ServiceError,
    DeviceOfflineError,
    SigningError,
)


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    message: str
    retry_after: int | None = None


def http_error_for(exc: CertrollError) -> HttpError:
    """The HTTP answer for a typed error raised by the rotation service."""
    if isinstance(exc, InvalidRequestError):
        return HttpError(400, exc.code, exc.message)
    if isinstance(exc, CsrRejectedError):
        return HttpError(422, exc.code, exc.message)
    if isinstance(exc, NotFoundError):
        return HttpError(404, "not_found", str(exc))
    if isinstance(exc, DeviceDisallowedError):
        return HttpError(409, "device_disallowed", str(exc))
    if isinstance(exc, ConflictError | ConcurrencyError):
        return HttpError(409, "conflict", str(exc))
    if isinstance(exc, ThrottledError):
        return HttpError(429, "throttled", str(exc), max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, DeviceOfflineError):
        return HttpError(503, "device_offline", str(exc), 30)
    if isinstance(exc, ServiceError | SigningError):
        return HttpError(502, "upstream_error", str(exc))
    return HttpError(500, "internal_error", "the request failed; see the logs")


def ca_http_error_for(exc: CertrollError) -> HttpError:
    """:func:`http_error_for`, except that a 409 keeps the error's own code (a CA-roll or
    campaign step refused in the state it found says which state): the one mapping for
    the CA routes and their queued steps."""
    error = http_error_for(exc)
    code = getattr(exc, "code", None)
    if error.status == 409 and isinstance(code, str):
        return HttpError(409, code, str(exc))
    return error
