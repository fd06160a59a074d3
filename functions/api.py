"""HTTP API for operators: disallow, allow, renew and inspect one device.

Routes (under ``/api``; see docs/api.md and ``functions/openapi.json``; the CA roll's
and the campaigns' routes are in :mod:`functions.ca_api`):

- ``POST devices/{id}/disallow`` body ``{"reason": "..."}``
- ``POST devices/{id}/allow`` optional body ``{"csr": "<PEM CSR made on the device>"}``
- ``POST devices/{id}/renew`` optional body ``{"reason": "manual|compromise|ca-roll|expiring"}``
- ``GET  devices/{id}``
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

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func

from functions._errors import HttpError, http_error_for
from functions._http import OperatorRoute, Refusal, error_response, json_response
from functions._services import audit_log, rotation, services, to_jsonable
from functions.ca_api import operator_routes
from functions.parsing.api import parse_allow, parse_disallow, parse_renew, parse_status
from shared.domain.auth import Caller, OperatorAuthenticator
from shared.domain.commands import Allow, Disallow, StartRenewal, Status
from shared.domain.errors import CertrollError, CsrRejectedError, InvalidRequestError
from shared.domain.messages import check_device_id
from shared.domain.rotation import RotationService
from shared.ports import AuditLog
from shared.settings import Settings

logger = logging.getLogger(__name__)

bp = func.Blueprint()

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
#: what a device route is parsed into
OperatorCommand = Disallow | Allow | StartRenewal | Status
DEVICES_ROUTE = "devices/{id}/{action?}"
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
    routes |= operator_routes()
    return routes


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
        try:
            return self._handle(req)
        except Refusal as refusal:
            return refusal.response

    def _handle(self, req: func.HttpRequest) -> func.HttpResponse:
        action = req.route_params.get("action") or None
        raw_id = req.route_params.get("id")
        operation = OPERATIONS.get(((req.method or "").upper(), action))
        route = OperatorRoute(req, operation or "unknown", self._audit, self._authenticator)
        caller = route.authenticate()  # a verified token first, then the operator role
        principal = _Actor(caller)
        if operation is None:
            if action is not None and any(a == action for _, a in OPERATIONS):
                allowed = ", ".join(sorted(m for m, a in OPERATIONS if a == action))
                raise route.refuse(
                    405,
                    "method_not_allowed",
                    f"{route.method} is not allowed here; use {allowed}",
                    headers={"Allow": allowed},
                )
            raise route.refuse(
                404, "route_not_found", f"no route {route.method} devices/{{id}}/{action or ''}"
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
            raise route.refuse(400, exc.code, exc.message, device_id=valid_id) from None
        try:
            return self._call(operation, command, principal)
        except CsrRejectedError as exc:
            # the issuer refused the CSR brought to allow: nothing changed
            error = http_error_for(exc)
            raise route.refuse(
                error.status, error.code, error.message, device_id=device_id
            ) from None

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
        return json_response(status, to_jsonable(result))


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


_api = DevicesApi()


@bp.route(route=DEVICES_ROUTE, methods=[func.HttpMethod.GET, func.HttpMethod.POST])
def devices_api(req: func.HttpRequest) -> func.HttpResponse:
    return _api.handle(req)


@bp.route(route=OPENAPI_ROUTE, methods=[func.HttpMethod.GET])
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        body=OPENAPI_PATH.read_bytes(),
        status_code=200,
        mimetype="application/json",
        charset="utf-8",
    )
