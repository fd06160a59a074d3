"""HTTP API for the issuing CA's lifecycle: the CA roll and re-roll campaigns.

Routes (under ``/api``; docs/api.md, docs/ca-roll.md, docs/campaigns.md):

- ``GET  ca/roll`` the roll's record (and its campaign)
- ``POST ca/roll/{step}`` one step: prepare, install, verify, trust, reissue, retire. With
  ``Prefer: respond-async`` (RFC 7240) the step is put on the work queue for the queue
  worker and answered ``202 Accepted`` (``Location: ca/roll``); otherwise it runs here.
- ``GET  campaigns[?state=running,paused]`` the campaigns, newest first
- ``POST campaigns`` start one (``{"query", "reason", "id", "devicesExpected",
  "abortCriteria"}``); its runs go on through the work queue
- ``GET  campaigns/{id}`` state, progress, ETA
- ``POST campaigns/{id}/pause|resume|abort`` (``{"note"}``; an abort must have one)

The same gate as the device routes (:class:`functions._http.OperatorRoute`): an Entra ID
token with the operator role; every refusal is audited with outcome ``rejected``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions._errors import ca_http_error_for
from functions._http import OperatorRoute, Refusal, error_response, json_response
from functions._services import audit_log, services, to_jsonable
from functions.parsing.ca_roll import ca_roll_message, parse_ca_roll
from functions.parsing.campaigns import parse_action, parse_start, parse_states
from shared.domain.auth import OperatorAuthenticator
from shared.domain.ca_roll import parse_step
from shared.domain.errors import CertrollError, InvalidRequestError
from shared.ports import AuditLog, WorkQueue

logger = logging.getLogger(__name__)

bp = func.Blueprint()

CA_ROLL_ROUTE = "ca/roll/{step?}"
CAMPAIGNS_ROUTE = "campaigns/{id?}/{action?}"
CAMPAIGN_ACTIONS = ("pause", "resume", "abort")


def operator_routes() -> set[tuple[str, str]]:
    """The (method, path) pairs served here, as the OpenAPI document names them."""
    routes = {("GET", "/ca/roll"), ("POST", "/ca/roll/{step}")}
    routes |= {("GET", "/campaigns"), ("POST", "/campaigns"), ("GET", "/campaigns/{id}")}
    routes |= {("POST", f"/campaigns/{{id}}/{action}") for action in CAMPAIGN_ACTIONS}
    return routes


def _service_error(route: OperatorRoute, exc: CertrollError) -> func.HttpResponse:
    """A typed service error as its HTTP answer (a 409 keeps the error's own code)."""
    error = ca_http_error_for(exc)
    log = logger.warning if error.status < 500 else logger.error
    log("%s by %s answered %d: %s", route.operation, route.actor, error.status, exc)
    return error_response(error)


def _wants_async(req: func.HttpRequest) -> bool:
    prefer = req.headers.get("prefer") or ""
    return any(p.strip().lower() == "respond-async" for p in prefer.split(","))


class CaRollApi:
    """``ca/roll[/{step}]``: the CA roll's record (GET) and its steps (POST)."""

    def __init__(
        self,
        roll: Callable[[], Any] = lambda: services().ca_roll,
        audit: Callable[[], AuditLog] = audit_log,
        authenticator: Callable[[], OperatorAuthenticator] = lambda: services().authenticator,
        queue: Callable[[], WorkQueue] = lambda: services().queue,
    ) -> None:
        self._roll = roll
        self._audit = audit
        self._authenticator = authenticator
        self._queue = queue

    def handle(self, req: func.HttpRequest) -> func.HttpResponse:
        step_text = req.route_params.get("step") or None
        route = OperatorRoute(
            req, f"ca_roll_{step_text or 'status'}", self._audit, self._authenticator
        )
        try:
            return self._handle(req, route, step_text)
        except Refusal as refusal:
            return refusal.response

    def _handle(
        self, req: func.HttpRequest, route: OperatorRoute, step_text: str | None
    ) -> func.HttpResponse:
        caller = route.authenticate()
        if (route.method, step_text is None) not in (("GET", True), ("POST", False)):
            allowed = "GET" if step_text is None else "POST"
            raise route.refuse(
                405, "method_not_allowed", f"use {allowed} here", headers={"Allow": allowed}
            )
        try:
            if route.method == "GET":
                roll = self._roll()
                record = roll.status()
                out: dict[str, Any] = {"roll": record.to_dict()}
                campaign = roll.campaign(record)
                if campaign is not None:
                    out["campaign"] = campaign.to_dict()
                return json_response(200, to_jsonable(out))
            body = req.get_body() or b""
            if _wants_async(req):
                message = ca_roll_message(parse_step(step_text), caller.actor, body)
                self._queue().send(message)
                logger.info("ca_roll_api: %s by %s queued", route.operation, caller.actor)
                return json_response(
                    202,
                    {"queued": True, "step": message["step"], "status": "ca/roll"},
                    {"Location": "ca/roll", "Preference-Applied": "respond-async"},
                )
            step, options = parse_ca_roll(step_text, body)
            result = self._roll().run(step, caller.actor, **options)
        except InvalidRequestError as exc:
            raise route.refuse(400, exc.code, exc.message) from None
        except CertrollError as exc:
            return _service_error(route, exc)
        logger.info("ca_roll_api: %s by %s done", route.operation, caller.actor)
        return json_response(200, to_jsonable(result.to_dict()))


class CampaignsApi:
    """``campaigns[/{id}[/{action}]]``: list, start, status, pause, resume, abort."""

    def __init__(
        self,
        campaigns: Callable[[], Any] = lambda: services().campaign_service,
        audit: Callable[[], AuditLog] = audit_log,
        authenticator: Callable[[], OperatorAuthenticator] = lambda: services().authenticator,
    ) -> None:
        self._campaigns = campaigns
        self._audit = audit
        self._authenticator = authenticator

    def handle(self, req: func.HttpRequest) -> func.HttpResponse:
        cid = req.route_params.get("id") or None
        action = req.route_params.get("action") or None
        method = (req.method or "").upper()
        operation = {
            ("GET", False, False): "campaign_list",
            ("POST", False, False): "campaign_start",
            ("GET", True, False): "campaign_status",
        }.get((method, cid is not None, action is not None))
        if method == "POST" and cid is not None and action in CAMPAIGN_ACTIONS:
            operation = f"campaign_{action}"
        route = OperatorRoute(
            req, operation or "campaign_unknown", self._audit, self._authenticator
        )
        try:
            return self._handle(req, route, operation, cid, action)
        except Refusal as refusal:
            return refusal.response

    def _handle(
        self,
        req: func.HttpRequest,
        route: OperatorRoute,
        operation: str | None,
        cid: str | None,
        action: str | None,
    ) -> func.HttpResponse:
        caller = route.authenticate()
        if operation is None:
            if action is not None and action not in CAMPAIGN_ACTIONS:
                raise route.refuse(404, "route_not_found", f"no campaign action {action!r}")
            allowed = "GET" if action is None else "POST"
            if action is None and cid is None:
                allowed = "GET, POST"
            raise route.refuse(
                405, "method_not_allowed", f"use {allowed} here", headers={"Allow": allowed}
            )
        body = req.get_body() or b""
        try:
            svc = self._campaigns()
            if operation == "campaign_list":
                states = parse_states([req.params.get("state") or ""])
                return json_response(200, to_jsonable([s.to_dict() for s in svc.list(states)]))
            if operation == "campaign_start":
                start = parse_start(body)
                created = svc.start(
                    start.query,
                    start.reason,
                    caller.actor,
                    campaign_id=start.campaign_id,
                    abort_criteria=start.abort_criteria,
                    devices_expected=start.devices_expected,
                )
                status = svc.status(created.campaign_id)
                return json_response(
                    201,
                    to_jsonable(status.to_dict()),
                    {"Location": f"campaigns/{created.campaign_id}"},
                )
            assert cid is not None
            if operation == "campaign_status":
                return json_response(200, to_jsonable(svc.status(cid).to_dict()))
            assert action is not None
            parsed = parse_action(action, body)
            if parsed.action == "pause":
                svc.pause(cid, caller.actor, parsed.note)
            elif parsed.action == "resume":
                svc.resume(cid, caller.actor)
            else:
                svc.abort(cid, caller.actor, parsed.note or "")
            logger.info("campaigns_api: %s %s by %s done", operation, cid, caller.actor)
            return json_response(200, to_jsonable(svc.status(cid).to_dict()))
        except InvalidRequestError as exc:
            raise route.refuse(400, exc.code, exc.message) from None
        except CertrollError as exc:
            return _service_error(route, exc)


_ca_roll_api = CaRollApi()
_campaigns_api = CampaignsApi()


@bp.route(route=CA_ROLL_ROUTE, methods=[func.HttpMethod.GET, func.HttpMethod.POST])
def ca_roll_api(req: func.HttpRequest) -> func.HttpResponse:
    return _ca_roll_api.handle(req)


@bp.route(route=CAMPAIGNS_ROUTE, methods=[func.HttpMethod.GET, func.HttpMethod.POST])
def campaigns_api(req: func.HttpRequest) -> func.HttpResponse:
    return _campaigns_api.handle(req)
