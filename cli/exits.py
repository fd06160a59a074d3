"""The one table from typed errors to ``certroll`` exit codes (documented in docs/api.md
and the README).

=====  ==========  ==========================================================================
code   name        when
=====  ==========  ==========================================================================
0      OK          done
1      FAILED      any other failure (a remote service, the signing key, a demo check)
2      REJECTED    bad input or usage, a CSR the issuing policy refuses, a disallowed device
3      NOT_FOUND   the device, certificate, PKI file or ledger does not exist
4      CONFLICT    it already exists (``pki init`` over an existing PKI without ``--force``)
5      RETRY       throttled, or someone else changed it at the same time: try again later
=====  ==========  ==========================================================================

The reason goes to stderr as one line (``rejected: <code>: <message>``, ``refused: ...``,
``not found: ...``, ``conflict: ...``, ``throttled: ...; try again in N s``, ``failed: ...``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ThrottledError,
)


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    REJECTED = 2
    NOT_FOUND = 3
    CONFLICT = 4
    RETRY = 5


def _coded(exc: CertrollError) -> str:
    code = getattr(exc, "code", "")
    message = getattr(exc, "message", str(exc))
    return f"rejected: {code}: {message}"


def _throttled(exc: CertrollError) -> str:
    after = exc.retry_after if isinstance(exc, ThrottledError) else 1.0
    return f"throttled: {exc}; try again in {after:g} s"


@dataclass(frozen=True)
class ErrorExit:
    error: type[CertrollError]
    code: ExitCode
    describe: Callable[[CertrollError], str]


#: First match wins; :class:`CertrollError` last catches the rest.
ERROR_EXITS: tuple[ErrorExit, ...] = (
    ErrorExit(InvalidRequestError, ExitCode.REJECTED, _coded),
    ErrorExit(CsrRejectedError, ExitCode.REJECTED, _coded),
    ErrorExit(DeviceDisallowedError, ExitCode.REJECTED, lambda e: f"refused: {e}"),
    ErrorExit(NotFoundError, ExitCode.NOT_FOUND, lambda e: f"not found: {e}"),
    ErrorExit(ConflictError, ExitCode.CONFLICT, lambda e: f"conflict: {e}"),
    ErrorExit(ConcurrencyError, ExitCode.RETRY, lambda e: f"conflict: {e}; try again"),
    ErrorExit(ThrottledError, ExitCode.RETRY, _throttled),
    ErrorExit(CertrollError, ExitCode.FAILED, lambda e: f"failed: {e}"),
)


def exit_for(exc: CertrollError) -> tuple[ExitCode, str]:
    """The exit code and the stderr line for ``exc``."""
    for entry in ERROR_EXITS:
        if isinstance(exc, entry.error):
            return entry.code, entry.describe(exc)
    raise AssertionError("CertrollError is the last entry")  # pragma: no cover
