"""HTTP API for operators: disallow, allow, renew and inspect one device.

Routes (under ``/api``; see docs/api.md and ``functions/openapi.json``):

- ``POST devices/{id}/disallow`` body ``{"reason": "..."}``
- ``POST devices/{id}/allow`` optional body ``{"csr": "<PEM CSR made on the device>"}``
- ``POST devices/{id}/renew`` optional body ``{"reason": "manual|compromise|ca-roll|expiring"}``
- ``GET  devices/{id}``
- ``GET  ca/roll`` the issuing CA's roll (record, campaign)
- ``POST ca/roll/{step}`` one step of the roll: prepare, install, verify, trust, reissue,
  retire (docs/ca-roll.md)
- ``GET  openapi.json``

The function key is enforced by the host (``AuthLevel.FUNCTION``). The device routes
also require an Entra ID access token (``Authorization: Bearer``) validated in code
(``shared.domain.auth.OperatorAuthenticator`` over ``shared.adapters.entra``) whose
``roles`` hold the app role named by ``CERTROLL_OPERATOR_ROLE``; ``X-MS-CLIENT-PRINCIPAL``
is never enough on its own. Every refusal decided here (401, 403, 503 when the signing
keys cannot be read, 400, 404/405 for an unknown route) is answered before the rotation
service is called and is written to the audit log with outcome ``rejected`` (never with
the token); so is a CSR brought to ``allow`` that the issuing policy refuses (422),
checked before the device leaves ``disallowed``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func

from functions._errors import HttpError, http_error_for
from functions._services import audit_log, rotation, services, to_jsonable
from functions.parsing.api import parse_allow, parse_disallow, parse_renew, parse_status
from shared.domain.auth import AuthError, AuthUnavailableError, Caller, OperatorAuthenticator
from shared.domain.commands import Allow, Disallow, StartRenewal, Status
from shared.domain.errors import CertrollError, CsrRejectedError, InvalidRequestError
from shared.domain.messages import check_device_id
from shared.domain.model import AuditEvent
from shared.domain.redact import redact_text
from shared.domain.rotation import RotationService
from shared.ports import AuditLog
from shared.settings import Settings

logger = logging.getLogger(__name__)

bp = func.Blueprint()

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
#: what a device route is parsed into
OperatorCommand = Disallow | Allow | StartRenewal | Status
DEVICES_ROUTE = "devices/{id}/{action?}"
CA_ROLL_ROUTE = "ca/roll/{step?}"
OPENAPI_ROUTE = "openapi.json"

#: (HTTP method, action segment or None) -> operation name; the only combinations served.
OPERATIONS: dict[tuple[str, str | None], str] = {
    ("GET", None): "status",
    ("POST", "disallow"): "disallow",
    ("POST", "allow"): "allow",
    ("POST", "renew"): "renew",
}


def documented_routes() -> set[tuple[str, str]]:
    """Every (method, path) the API serves, with paths as in the OpenAPI document."""
    routes = {
        (method, "/devices/{id}" + (f"/{action}" if action else ""))
        for method, action in OPERATIONS
    }
    routes.add(("GET", "/" + OPENAPI_ROUTE))
    routes.add(("GET", "/ca/roll"))
    routes.add(("POST", "/ca/roll/{step}"))
    return routes


def _json_response(
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
    return _json_response(
        error.status, {"error": {"code": error.code, "message": error.message}}, extra
    )


class DevicesApi:
    """The request handler behind ``devices_api``; services are looked up per call."""

    def __init__(
        self,
        service: Callable[[], RotationService] = rotation,
        audit: Callable[[], AuditLog] = audit_log,
        settings: Callable[[], Settings] = lambda: services().settings,
        authenticator: Callable[[], OperatorAuthenticator] = lambda: services().authenticator,
    ) -> None:
        self._service = service
        self._audit = audit
        self._settings = settings
        self._authenticator = authenticator

    def handle(self, req: func.HttpRequest) -> func.HttpResponse:
        method = (req.method or "").upper()
        action = req.route_params.get("action") or None
        raw_id = req.route_params.get("id")
        operation = OPERATIONS.get((method, action))
        # the function key may be in the URL (?code=): never recorded
        context = {
            "method": method,
            "route": redact_text(req.url),
            "operation": operation or "unknown",
        }

        def refuse(
            status: int,
            code: str,
            message: str,
            actor: str,
            device_id: str | None = None,
            headers: dict[str, str] | None = None,
            retry_after: int | None = None,
        ) -> func.HttpResponse:
            self._record_rejection(operation, actor, device_id, status, code, message, context)
            return error_response(HttpError(status, code, message, retry_after), headers)

        # authorization step: a verified token first, then the operator app role
        try:
            authenticator = self._authenticator()
            caller = authenticator.authenticate(
                req.headers.get("authorization"), req.headers.get("x-ms-client-principal")
            )
        except AuthError as exc:
            context["reason"] = exc.code
            if isinstance(exc, AuthUnavailableError):
                logger.error("devices_api: authentication unavailable: %s", exc)
                return refuse(503, "auth_unavailable", exc.message, "anonymous", retry_after=30)
            headers = None
            if exc.code not in ("token_missing", "principal_missing"):
                headers = {"WWW-Authenticate": 'Bearer realm="certroll", error="invalid_token"'}
            return refuse(
                401,
                "unauthenticated",
                f"not authenticated: {exc.message}",
                "anonymous",
                headers=headers,
            )
        context["caller"] = caller.audit_detail()
        try:
            authenticator.authorize(caller)
        except AuthError as exc:
            return refuse(403, "forbidden", exc.message, caller.actor)
        principal = _Actor(caller)
        if operation is None:
            if action is not None and any(a == action for _, a in OPERATIONS):
                allowed = ", ".join(sorted(m for m, a in OPERATIONS if a == action))
                return refuse(
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed here; use {allowed}",
                    principal.name,
                    headers={"Allow": allowed},
                )
            return refuse(
                404,
                "route_not_found",
                f"no route {method} devices/{{id}}/{action or ''}",
                principal.name,
            )
        try:
            device_id = check_device_id(raw_id)
            body = req.get_body() or b""
            command: OperatorCommand
            if operation == "disallow":
                command = parse_disallow(device_id, body, principal.name)
            elif operation == "allow":
                command = parse_allow(
                    device_id,
                    body,
                    principal.name,
                    csr_max_bytes=self._settings().int("CERTROLL_CSR_MAX_BYTES"),
                )
            elif operation == "renew":
                command = parse_renew(device_id, body, principal.name)
            else:
                command = parse_status(device_id, body)
        except InvalidRequestError as exc:
            valid_id = raw_id if isinstance(raw_id, str) and _is_device_id(raw_id) else None
            return refuse(400, exc.code, exc.message, principal.name, valid_id)
        try:
            return self._call(operation, command, principal)
        except CsrRejectedError as exc:
            # the issuer refused the CSR brought to allow: nothing changed
            error = http_error_for(exc)
            return refuse(error.status, error.code, error.message, principal.name, device_id)

    def _call(
        self, operation: str, command: OperatorCommand, principal: _Actor
    ) -> func.HttpResponse:
        """The service's answer; a CSR the issuer refuses propagates (audited above)."""
        device_id = command.device_id
        result: Any
        try:
            service = self._service()
            if isinstance(command, Disallow):
                result = service.disallow(command)
                status = 200
            elif isinstance(command, Allow):
                result = service.allow(command)
                status = 202
            elif isinstance(command, StartRenewal):
                result = service.start_renewal(command)
                status = 202
            else:
                result = service.status(command)
                status = 200
        except CsrRejectedError as exc:
            logger.warning(
                "devices_api: %s %s by %s refused by the issuer: %s",
                operation,
                device_id,
                principal.name,
                exc,
            )
            raise
        except CertrollError as exc:
            error = http_error_for(exc)
            log = logger.warning if error.status < 500 else logger.error
            log(
                "devices_api: %s %s by %s answered %d %s: %s",
                operation,
                device_id,
                principal.name,
                error.status,
                error.code,
                exc,
            )
            return error_response(error)
        except Exception:
            logger.exception(
                "devices_api: %s %s by %s failed", operation, device_id, principal.name
            )
            return error_response(
                HttpError(500, "internal_error", "the request failed; see the logs")
            )
        logger.info(
            "devices_api: %s %s by %s answered %d", operation, device_id, principal.name, status
        )
        return _json_response(status, to_jsonable(result))

    def _record_rejection(
        self,
        operation: str | None,
        actor: str,
        device_id: str | None,
        status: int,
        code: str,
        message: str,
        context: dict[str, Any],
    ) -> None:
        record_rejection(self._audit, operation, actor, device_id, status, code, message, context)


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
        "devices_api: %s %s refused %d %s for %s: %s",
        context["method"],
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
        logger.exception("devices_api: the rejection could not be audited")


class _Actor:
    """The authenticated caller as the audit log and the service calls name it."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.name = caller.actor


def _is_device_id(value: str) -> bool:
    try:
        check_device_id(value)
    except InvalidRequestError:
        return False
    return True


class CaRollApi:
    """``ca/roll[/{step}]``: the CA roll's record (GET) and its steps (POST), for an
    authenticated operator; refusals are audited as for the device routes."""

    def __init__(
        self,
        roll: Callable[[], Any] = lambda: services().ca_roll,
        audit: Callable[[], AuditLog] = audit_log,
        authenticator: Callable[[], OperatorAuthenticator] = lambda: services().authenticator,
    ) -> None:
        self._roll = roll
        self._audit = audit
        self._authenticator = authenticator

    def handle(self, req: func.HttpRequest) -> func.HttpResponse:
        from functions.parsing.ca_roll import parse_ca_roll

        method = (req.method or "").upper()
        step_text = req.route_params.get("step") or None
        operation = f"ca_roll_{step_text or 'status'}"
        context = {"method": method, "route": req.url, "operation": operation}

        def refuse(
            status: int, code: str, message: str, actor: str, retry_after: int | None = None
        ) -> func.HttpResponse:
            record_rejection(
                self._audit,
                operation,
                actor,
                None,
                status,
                code,
                message,
                context,
            )
            return error_response(HttpError(status, code, message, retry_after))

        try:
            authenticator = self._authenticator()
            caller = authenticator.authenticate(
                req.headers.get("authorization"), req.headers.get("x-ms-client-principal")
            )
        except AuthError as exc:
            if isinstance(exc, AuthUnavailableError):
                return refuse(503, "auth_unavailable", exc.message, "anonymous", 30)
            return refuse(401, "unauthenticated", f"not authenticated: {exc.message}", "anonymous")
        try:
            authenticator.authorize(caller)
        except AuthError as exc:
            return refuse(403, "forbidden", exc.message, caller.actor)
        if (method, step_text is None) not in (("GET", True), ("POST", False)):
            allowed = "GET" if step_text is None else "POST"
            return refuse(405, "method_not_allowed", f"use {allowed} here", caller.actor)
        try:
            roll = self._roll()
            if method == "GET":
                record = roll.status()
                out: dict[str, Any] = {"roll": record.to_dict()}
                campaign = roll.campaign(record)
                if campaign is not None:
                    out["campaign"] = campaign.to_dict()
                return _json_response(200, to_jsonable(out))
            step, options = parse_ca_roll(step_text, req.get_body() or b"")
            result = roll.run(step, caller.actor, **options)
        except InvalidRequestError as exc:
            return refuse(400, exc.code, exc.message, caller.actor)
        except CertrollError as exc:
            error = http_error_for(exc)
            code = getattr(exc, "code", None)
            if error.status == 409 and isinstance(code, str):
                error = HttpError(409, code, str(exc))
            logger.warning(
                "ca_roll_api: %s by %s answered %d: %s", operation, caller.actor, error.status, exc
            )
            return error_response(error)
        logger.info("ca_roll_api: %s by %s done", operation, caller.actor)
        return _json_response(200, to_jsonable(result.to_dict()))


_api = DevicesApi()
_ca_roll_api = CaRollApi()


@bp.route(route=DEVICES_ROUTE, methods=[func.HttpMethod.GET, func.HttpMethod.POST])
def devices_api(req: func.HttpRequest) -> func.HttpResponse:
    return _api.handle(req)


@bp.route(route=CA_ROLL_ROUTE, methods=[func.HttpMethod.GET, func.HttpMethod.POST])
def ca_roll_api(req: func.HttpRequest) -> func.HttpResponse:
    return _ca_roll_api.handle(req)


@bp.route(route=OPENAPI_ROUTE, methods=[func.HttpMethod.GET])
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        body=OPENAPI_PATH.read_bytes(),
        status_code=200,
        mimetype="application/json",
        charset="utf-8",
    )
