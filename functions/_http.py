"""What every operator route shares: JSON answers, the audited refusal, and the gate
(an Entra ID token first, then the operator app role) in front of each route."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions._errors import HttpError
from shared.domain.auth import AuthError, AuthUnavailableError, Caller, OperatorAuthenticator
from shared.domain.model import AuditEvent
from shared.domain.redact import redact_text
from shared.ports import AuditLog

logger = logging.getLogger(__name__)


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        body=json.dumps(payload, sort_keys=True),
        status_code=status,
        mimetype="application/json",
        charset="utf-8",
        headers=headers,
    )


def error_response(error: HttpError, headers: dict[str, str] | None = None) -> func.HttpResponse:
    extra = dict(headers or {})
    if error.retry_after is not None:
        extra["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        extra.setdefault("WWW-Authenticate", 'Bearer realm="certroll"')
    elif error.status == 403:
        extra.setdefault("WWW-Authenticate", 'Bearer realm="certroll", error="insufficient_scope"')
    return json_response(
        error.status, {"error": {"code": error.code, "message": error.message}}, extra
    )


def record_rejection(
    audit: Callable[[], AuditLog],
    operation: str | None,
    actor: str,
    device_id: str | None,
    status: int,
    code: str,
    message: str,
    context: dict[str, Any],
) -> None:
    """Log and audit a refused API request (outcome ``rejected``, never the token)."""
    logger.warning(
        "operator api: %s %s %s refused %d %s for %s: %s",
        context.get("method"),
        context.get("operation"),
        device_id or "-",
        status,
        code,
        actor,
        message,
    )
    try:
        audit().append(
            AuditEvent(
                action=f"api_{operation or 'unknown'}",
                outcome="rejected",
                actor=actor,
                device_id=device_id,
                detail={"status": status, "code": code, "message": message, **context},
            )
        )
    except Exception:
        logger.exception("operator api: the rejection could not be audited")


class Refusal(Exception):
    """A request refused before any service was called (already audited)."""

    def __init__(self, response: func.HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class OperatorRoute:
    """One operator route's request context: who is calling, and the audited refusal.

    ``context`` goes into every rejection record; the function key may be in the URL
    (``?code=``), so the route is redacted."""

    def __init__(
        self,
        req: func.HttpRequest,
        operation: str,
        audit: Callable[[], AuditLog],
        authenticator: Callable[[], OperatorAuthenticator],
    ) -> None:
        self.req = req
        self.method = (req.method or "").upper()
        self.operation = operation
        self.context: dict[str, Any] = {
            "method": self.method,
            "route": redact_text(req.url),
            "operation": operation,
        }
        self._audit = audit
        self._authenticator = authenticator
        self.actor = "anonymous"

    def refuse(
        self,
        status: int,
        code: str,
        message: str,
        *,
        device_id: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: int | None = None,
    ) -> Refusal:
        """The audited refusal, to be raised."""
        record_rejection(
            self._audit, self.operation, self.actor, device_id, status, code, message, self.context
        )
        return Refusal(error_response(HttpError(status, code, message, retry_after), headers))

    def authenticate(self) -> Caller:
        """The caller holding the operator role; Refusal (401/403/503) otherwise."""
        try:
            authenticator = self._authenticator()
            caller = authenticator.authenticate(
                self.req.headers.get("authorization"),
                self.req.headers.get("x-ms-client-principal"),
            )
        except AuthError as exc:
            self.context["reason"] = exc.code
            if isinstance(exc, AuthUnavailableError):
                logger.error("operator api: authentication unavailable: %s", exc)
                raise self.refuse(503, "auth_unavailable", exc.message, retry_after=30) from None
            headers = None
            if exc.code not in ("token_missing", "principal_missing"):
                headers = {"WWW-Authenticate": 'Bearer realm="certroll", error="invalid_token"'}
            raise self.refuse(
                401, "unauthenticated", f"not authenticated: {exc.message}", headers=headers
            ) from None
        self.context["caller"] = caller.audit_detail()
        self.actor = caller.actor
        try:
            authenticator.authorize(caller)
        except AuthError as exc:
            raise self.refuse(403, "forbidden", exc.message) from None
        return caller
