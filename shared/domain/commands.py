"""Every command and event that reaches the rotation service, typed and validated.

The triggers in ``functions/`` (and the CLI) parse a payload once into one of these
frozen dataclasses; the service takes them as they are and never looks at raw JSON.
A command that cannot be built raises :class:`InvalidRequestError` with a code and a
message a person can act on, before anything changes anywhere.

Inbound events:

- :class:`TwinReported` -- a device's reported ``x509`` section changed (parsed
  :class:`~shared.domain.messages.ReportedX509`);
- :class:`DeviceConnected`, :class:`DeviceCreated` -- IoT Hub lifecycle events;
- :class:`~shared.domain.model.ConnectionFailure` -- a 401003/403012 connect;
- :class:`~shared.domain.messages.RotateBatch` -- one work-queue message.

Operator commands: :class:`StartRenewal`, :class:`Disallow`, :class:`Allow` (with an
:class:`OperatorCsr` or none), :class:`Status`, :class:`Sweep`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.errors import InvalidRequestError
from shared.domain.messages import (
    MAX_CSR_BYTES,
    ReportedX509,
    RotateBatch,
    check_device_id,
    csr_sha256,
    parse_reported_x509,
    parse_rotate_message,
)
from shared.domain.model import ConnectionFailure, Trigger

__all__ = [
    "Allow",
    "ConnectionFailure",
    "DeviceConnected",
    "DeviceCreated",
    "Disallow",
    "OperatorCsr",
    "RotateBatch",
    "StartRenewal",
    "Status",
    "Sweep",
    "TwinReported",
    "parse_rotate_message",
]

_PEM_CSR = re.compile(
    r"\s*-----BEGIN CERTIFICATE REQUEST-----\r?\n"
    r"([A-Za-z0-9+/=\s]+?)"
    r"-----END CERTIFICATE REQUEST-----\s*"
)


def _non_blank(value: object, code: str, message: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(code, message)
    return value.strip()


# --------------------------------------------------------------------------- device events


@dataclass(frozen=True)
class TwinReported:
    """A device's reported ``x509`` twin section, parsed (docs/device-contract.md)."""

    device_id: str
    report: ReportedX509
    twin_version: int | None = None

    @classmethod
    def parse(
        cls,
        device_id: str,
        section: Mapping[str, Any],
        twin_version: int | None = None,
        *,
        csr_max_bytes: int = MAX_CSR_BYTES,
    ) -> TwinReported:
        """From the raw section; InvalidRequestError (``malformed_report``, or
        ``csr_too_large`` above ``csr_max_bytes``) otherwise."""
        device_id = check_device_id(device_id)
        report = parse_reported_x509(device_id, section, csr_max_bytes=csr_max_bytes)
        return cls(device_id, report, twin_version)


@dataclass(frozen=True)
class DeviceConnected:
    device_id: str
    at: datetime

    def __post_init__(self) -> None:
        check_device_id(self.device_id)


@dataclass(frozen=True)
class DeviceCreated:
    device_id: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)


# --------------------------------------------------------------------------- operator commands


@dataclass(frozen=True)
class StartRenewal:
    """Ask the device for a CSR (renew API, CLI, sweep)."""

    device_id: str
    reason: Trigger
    actor: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        object.__setattr__(self, "reason", Trigger(self.reason))


@dataclass(frozen=True)
class Disallow:
    """Block a device everywhere; ``reason`` and ``actor`` are stored without blanks."""

    device_id: str
    reason: str
    actor: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        reason = _non_blank(self.reason, "reason_required", "a disallow needs a reason")
        actor = _non_blank(self.actor, "actor_required", "a disallow needs an actor")
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "actor", actor)


@dataclass(frozen=True)
class OperatorCsr:
    """A CSR made on the device and brought by an operator to ``allow``.

    Only its framing is checked here (one PEM ``CERTIFICATE REQUEST`` block of base64
    data, at most ``max_bytes`` UTF-8 bytes); whether it meets the issuing policy
    (key, subject, signature, a revoked key reused) is the issuer's to decide.
    """

    pem: str
    sha256: str

    @classmethod
    def parse(
        cls, value: object, *, max_bytes: int = MAX_CSR_BYTES, what: str = "'csr'"
    ) -> OperatorCsr:
        """Raises InvalidRequestError ``csr_invalid`` or ``csr_too_large``."""
        if not isinstance(value, str):
            raise InvalidRequestError(
                "csr_invalid", f"{what} must be a string holding a PEM certificate request"
            )
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON)
            raise InvalidRequestError("csr_invalid", f"{what} is not UTF-8 text") from None
        if size > max_bytes:
            raise InvalidRequestError(
                "csr_too_large", f"{what} has {size} bytes; at most {max_bytes} are allowed"
            )
        match = _PEM_CSR.fullmatch(value)
        if match is None:
            raise InvalidRequestError(
                "csr_invalid",
                f"{what} is not one PEM block '-----BEGIN CERTIFICATE REQUEST-----' ... "
                "'-----END CERTIFICATE REQUEST-----'",
            )
        try:
            der = base64.b64decode("".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        if not der:
            raise InvalidRequestError("csr_invalid", f"{what} does not hold base64 data")
        return cls(pem=value, sha256=csr_sha256(value))


@dataclass(frozen=True)
class Allow:
    """Let a disallowed device back in; ``csr``: one made on the device, or None (the
    request then waits for the device)."""

    device_id: str
    actor: str
    csr: OperatorCsr | None = None

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        object.__setattr__(
            self, "actor", _non_blank(self.actor, "actor_required", "an allow needs an actor")
        )

    @classmethod
    def with_pem(
        cls,
        device_id: str,
        actor: str,
        csr_pem: str | None = None,
        *,
        max_bytes: int = MAX_CSR_BYTES,
    ) -> Allow:
        csr = None if csr_pem is None else OperatorCsr.parse(csr_pem, max_bytes=max_bytes)
        return cls(device_id, actor, csr)


@dataclass(frozen=True)
class Status:
    device_id: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)


@dataclass(frozen=True)
class Sweep:
    """The daily sweep; ``dry_run`` plans without enqueuing.

    The sweep reads the due twins a page at a time (``page_size``) and enqueues each
    page's work as it arrives. When ``time_budget_s`` seconds have passed (not in a dry
    run) it stops after a page and enqueues a ``sweep`` message with the next page's
    ``continuation``; the queue worker runs the sweep on from there (``started_at``: the
    first run's time, which fixes the query's horizon so the token stays valid)."""

    dry_run: bool = False
    batch_size: int = 100
    page_size: int = 1000
    time_budget_s: float | None = 420.0  # 7 of the 10 minutes a function may run
    continuation: str | None = None
    started_at: datetime | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise InvalidRequestError("batch_size_invalid", "batch_size must be at least 1")
        if isinstance(self.page_size, bool) or not 1 <= self.page_size <= 1000:
            raise InvalidRequestError("page_size_invalid", "page_size must be 1-1000")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise InvalidRequestError("time_budget_invalid", "time_budget_s must be positive")
