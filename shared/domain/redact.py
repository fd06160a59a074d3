"""Secrets never reach an audit record or a log line.

The function key may come as ``?code=`` on a URL, and a URL is what an API refusal
records (``detail.route``); a bearer token, a PIN or a password could end up in a detail
or a message by the same kind of accident. Everything audited passes :func:`redact`
(:class:`~shared.domain.model.AuditEvent` applies it on construction, so records read
back from storage are shown redacted too), and every log record's message passes
:func:`redact_text` once :func:`install_log_redaction` has run (``function_app.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

#: query parameters and ``name=value`` pairs whose value is a secret
SECRET_PARAMS = (
    "code",
    "sig",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "client_secret",
    "password",
    "pin",
    "so-pin",
    "so_pin",
    "x-functions-key",
    "subscription-key",
)
#: detail keys whose value is a secret (compared case-insensitively)
SECRET_KEYS = frozenset(
    {
        "authorization",
        "x-functions-key",
        "functionkey",
        "function_key",
        "password",
        "pin",
        "so_pin",
        "sopin",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "client_secret",
        "secret",
    }
)

_PAIR = re.compile(
    r"(?i)(?<![A-Za-z0-9_\-])(" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=([^&#\s\"']+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+")


def redact_text(text: str) -> str:
    """``text`` with the value of every secret ``name=value`` pair (a URL's ``code=``
    among them) and every bearer token replaced by ``[redacted]``."""
    if "=" not in text and "earer" not in text:
        return text
    text = _PAIR.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def redact(value: Any) -> Any:
    """``value`` (a detail: mappings, lists, strings, scalars) with secrets redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


class _RedactingLogRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return redact_text(super().getMessage())


def install_log_redaction() -> None:
    """Every log record made from now on shows its message redacted (idempotent)."""
    if logging.getLogRecordFactory() is not _RedactingLogRecord:
        logging.setLogRecordFactory(_RedactingLogRecord)
