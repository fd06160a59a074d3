"""The emulator's REST front end: the DPS and IoT Hub service APIs over loopback HTTP.

One Werkzeug server serves both APIs at its root: their paths do not overlap (DPS:
``/enrollments``, ``/enrollmentGroups``, ``/registrations``; hub: ``/devices``,
``/twins``, ``/jobs``...), and each route checks the ``api-version`` of its own spec.
Point ``DpsEnrollmentStore(server.url, ...)`` and
``IotHubRegistry(server.host, ..., scheme="http")`` at it.

Every request is validated against the services' published specs (:mod:`.spec`), needs
an ``Authorization`` header (any ``Bearer`` token or ``SharedAccessSignature`` is
accepted; none gives 401), and is then translated to the in-process emulator's ports.
The emulator's typed errors come back as the services' status codes and error bodies.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from local.emulator.http.spec import Operation, RequestError, load_spec
from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    InvalidRequestError,
    JobQuotaExceededError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.domain.model import (
    AuthType,
    CertificateSlot,
    DeviceIdentity,
    DeviceStatus,
    EnrollmentGroup,
    IndividualEnrollment,
    JobStatus,
    ProvisioningStatus,
    RegistrationState,
    Twin,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Request, dict[str, str], Any], Response]

# IoT Hub error names and their numeric codes (as the hub reports them)
HUB_CODES = {
    "ArgumentInvalid": 400004,
    "ArgumentNull": 400005,
    "InvalidProtocolVersion": 400001,
    "IotHubUnauthorizedAccess": 401002,
    "DeviceNotFound": 404001,
    "JobNotFound": 404002,
    "DeviceNotOnline": 404103,
    "DeviceAlreadyExists": 409001,
    "PreconditionFailed": 412002,
    "UnsupportedMediaType": 415001,
    "ThrottlingException": 429001,
    "ThrottlingMaxActiveJobCountExceeded": 429004,
    "ServerError": 500001,
    "NotImplemented": 501001,
}
_HUB_NAME_FOR = {
    "ApiVersionMissing": "InvalidProtocolVersion",
    "InvalidApiVersion": "InvalidProtocolVersion",
    "BadFormat": "ArgumentInvalid",
}


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _unquote(etag: str) -> str:
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def cert_info(cert: x509.Certificate) -> dict[str, Any]:
    """DPS ``X509CertificateInfo`` of a certificate (thumbprints upper-case hex, as DPS)."""
    return {
        "subjectName": cert.subject.rfc4514_string(),
        "sha1Thumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),
        "sha256Thumbprint": cert.fingerprint(hashes.SHA256()).hex().upper(),
        "issuerName": cert.issuer.rfc4514_string(),
        "notBeforeUtc": _iso(cert.not_valid_before_utc),
        "notAfterUtc": _iso(cert.not_valid_after_utc),
        "serialNumber": format(cert.serial_number, "X"),
        "version": cert.version.value + 1,
    }


#: "Bulk enrollment operation with maximum of 10 enrollments" (DPS service REST reference,
#: Individual Enrollment - Run Bulk Operation).
MAX_BULK_ENROLLMENTS = 10


def _bulk_error(ident: Any, status: int, message: str) -> dict[str, Any]:
    """One ``BulkEnrollmentOperationError``."""
    return {
        "registrationId": ident if isinstance(ident, str) else "",
        "errorCode": _dps_code(status, ""),
        "errorStatus": message,
    }


def _hub_if_match(request: Request) -> str | None:
    """The hub's If-Match: ETags are quoted, the wildcard too (``"*"``); the hub ignores
    an unquoted ``*`` (azure-iot-sdk-python PR #754, azure-iot-sdk-node PR #606), so it
    counts as no If-Match at all."""
    header = request.headers.get("If-Match")
    if header is None or not header.strip() or header.strip() == "*":
        return None
    return header


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _etag_headers(etag: str | None) -> dict[str, str]:
    return {"ETag": f'"{_unquote(etag)}"'} if etag else {}


# --------------------------------------------------------------------------- app


class FleetHttpApp:
    """The WSGI application over a ``FleetEmulator`` (``.dps``, ``.hub``)."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.dps = emulator.dps
        self.hub = emulator.hub
        self._core = getattr(emulator, "core", None) or getattr(emulator.hub, "_core", None)
        self._pems: dict[str, x509.Certificate] = {}  # certificates seen in request bodies
        self._ops: dict[str, Operation] = {}
        rules = []
        for service in ("dps", "hub"):
            for op in load_spec(service).operations:
                self._ops[op.operation_id] = op
                rules.append(Rule(op.werkzeug_rule, endpoint=op.operation_id, methods=[op.method]))
        self._map = Map(rules, strict_slashes=False, merge_slashes=False)
        self._handlers: dict[str, Handler] = {
            "IndividualEnrollment_Get": self.get_individual,
            "IndividualEnrollment_CreateOrUpdate": self.put_individual,
            "IndividualEnrollment_Delete": self.delete_individual,
            "IndividualEnrollment_Query": self.query_individual,
            "EnrollmentGroup_Get": self.get_group,
            "EnrollmentGroup_CreateOrUpdate": self.put_group,
            "EnrollmentGroup_Delete": self.delete_group,
            "EnrollmentGroup_Query": self.query_groups,
            "DeviceRegistrationState_Get": self.get_registration,
            "DeviceRegistrationState_Delete": self.delete_registration,
            "DeviceRegistrationState_Query": self.query_registrations,
            "IndividualEnrollment_RunBulkOperation": self.bulk_individual,
            "IndividualEnrollment_GetAttestationMechanism": self.individual_attestation,
            "EnrollmentGroup_RunBulkOperation": self.bulk_groups,
            "EnrollmentGroup_GetAttestationMechanism": self.group_attestation,
            "Devices_GetDevices": self.list_devices,
            "Devices_DeleteIdentity": self.delete_device,
            "Devices_GetIdentity": self.get_device,
            "Devices_CreateOrUpdateIdentity": self.put_device,
            "Devices_GetTwin": self.get_twin,
            "Devices_UpdateTwin": self.patch_twin,
            "Query_GetTwins": self.query_twins,
            "Devices_InvokeMethod": self.invoke_method,
            "Jobs_CreateScheduledJob": self.create_job,
            "Jobs_GetScheduledJob": self.get_job,
            "Jobs_QueryScheduledJobs": self.query_jobs,
        }

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)  # type: ignore[no-any-return]

    def dispatch(self, request: Request) -> Response:
        adapter = self._map.bind_to_environ(request.environ)
        service = "dps" if request.path.startswith(("/enrollment", "/registrations")) else "hub"
        try:
            endpoint, args = adapter.match()
        except NotFound:
            return self.error(service, 404, "NotFound", f"no operation at {request.path}")
        except MethodNotAllowed:
            return self.error(service, 405, "MethodNotAllowed", f"{request.method} not allowed")
        except HTTPException as exc:
            return self.error(service, exc.code or 400, "BadRequest", str(exc))
        op = self._ops[str(endpoint)]
        service = op.service
        try:
            self._authorize(request)
            body = op.validate(
                request.args, request.headers, request.content_type, request.get_data()
            )
            handler = self._handlers.get(op.operation_id)
            if handler is None:
                raise RequestError(
                    501, "NotImplemented", f"the emulator does not serve {op.operation_id}"
                )
            return handler(request, dict(args), body)
        except RequestError as exc:
            return self.error(service, exc.status, exc.name, exc.message)
        except JobQuotaExceededError as exc:
            return self.error(service, 429, "ThrottlingMaxActiveJobCountExceeded", str(exc))
        except ThrottledError as exc:
            return self.error(service, 429, "ThrottlingException", str(exc), exc.retry_after)
        except DeviceOfflineError as exc:
            return self.error(service, 404, "DeviceNotOnline", str(exc))
        except NotFoundError as exc:
            name = "JobNotFound" if op.path.startswith("/jobs") else "DeviceNotFound"
            return self.error(service, 404, name, str(exc))
        except ConflictError as exc:
            return self.error(service, 409, "DeviceAlreadyExists", str(exc))
        except ConcurrencyError as exc:
            return self.error(service, 412, "PreconditionFailed", str(exc))
        except (InvalidRequestError, ValueError) as exc:
            return self.error(service, 400, "ArgumentInvalid", str(exc))
        except ServiceError as exc:
            status = exc.status if exc.status and 400 <= exc.status < 600 else 500
            return self.error(service, status, "ServerError", str(exc))
        except CertrollError as exc:
            return self.error(service, 400, "ArgumentInvalid", str(exc))
        except Exception as exc:
            logger.exception("emulator %s %s failed", request.method, request.path)
            return self.error(service, 500, "ServerError", f"internal error: {exc}")

    @staticmethod
    def _authorize(request: Request) -> None:
        auth = request.headers.get("Authorization", "").strip()
        scheme, _, token = auth.partition(" ")
        if scheme not in ("Bearer", "SharedAccessSignature") or not token.strip():
            raise RequestError(
                401,
                "IotHubUnauthorizedAccess",
                "an Authorization header with a Bearer token or SharedAccessSignature is required",
            )

    def error(
        self,
        service: str,
        status: int,
        name: str,
        message: str,
        retry_after: float | None = None,
    ) -> Response:
        now = datetime.now(UTC)
        tracking = uuid.uuid4().hex
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
            # rounded up: a client that waits exactly this long must find the capacity
            headers["x-ms-retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000)))
        if service == "dps":
            code = _dps_code(status, name)
            headers["x-ms-error-code"] = str(code)
            body: dict[str, Any] = {
                "errorCode": code,
                "trackingId": tracking,
                "message": message,
                "timestampUtc": _iso(now),
            }
            return _json_response(body, status, headers)
        name = _HUB_NAME_FOR.get(name, name)
        if status == 401:
            name = "IotHubUnauthorizedAccess"
        code = HUB_CODES.get(name, status * 1000)
        headers["iothub-errorcode"] = name
        if name == "DeviceNotOnline":
            inner = {
                "errorCode": code,
                "trackingId": tracking,
                "message": message,
                "info": {},
                "timestampUtc": _iso(now),
            }
            return _json_response(
                {"Message": json.dumps(inner), "ExceptionMessage": ""}, status, headers
            )
        stamp = now.strftime("%m/%d/%Y %H:%M:%S")
        return _json_response(
            {
                "Message": f"ErrorCode:{name};{message}",
                "ExceptionMessage": f"Tracking ID:{tracking}-G:0-TimeStamp:{stamp}",
            },
            status,
            headers,
        )

    # ------------------------------------------------------------------ helpers

    def _etag_from(self, request: Request, current: Callable[[], str | None]) -> str | None:
        """The If-Match value in the emulator's own ETag spelling (None when absent).

        ``*`` stays ``*`` (any version matches); a value equal to the stored ETag once
        quotes are ignored becomes the stored ETag; anything else is passed on unquoted,
        so the emulator answers 412.
        """
        header = request.headers.get("If-Match")
        if header is None or not header.strip():
            return None
        if _unquote(header) == "*":  # '"*"' (RFC 7232); DPS also takes a bare *
            return "*"
        stored = current()
        if stored is not None and _unquote(header) == _unquote(stored):
            return stored
        return _unquote(header)

    def _record(self, kind: str, key: str) -> Any:
        if self._core is None:
            return None
        table = getattr(self._core, kind, None)
        return table.get(key) if isinstance(table, dict) else None

    def _stored_etag(self, kind: str, key: str) -> str | None:
        record = self._record(kind, key)
        if record is None:
            return None
        view = getattr(record, "view", record)
        etag = getattr(view, "etag", None)
        return etag if isinstance(etag, str) else None

    def _cert(self, kind: str, key: str, thumbprint: str | None) -> x509.Certificate | None:
        if not thumbprint:
            return None
        thumbprint = thumbprint.lower()
        record = self._record(kind, key)
        for slot in (getattr(record, "primary", None), getattr(record, "secondary", None)):
            if slot is not None and getattr(slot, "sha256", None) == thumbprint:
                cert = getattr(slot, "cert", None)
                if isinstance(cert, x509.Certificate):
                    return cert
        return self._pems.get(thumbprint)

    def _slot_json(self, kind: str, key: str, slot: CertificateSlot | None) -> Any:
        if slot is None:
            return None
        cert = self._cert(kind, key, slot.thumbprint_sha256)
        if cert is not None:
            return {"info": cert_info(cert)}
        info = {  # a certificate the front end never saw: the fields the port gives
            "subjectName": slot.subject,
            "sha256Thumbprint": (slot.thumbprint_sha256 or "").upper(),
            "notAfterUtc": _iso(slot.not_after),
        }
        return {"info": {k: v for k, v in info.items() if v}}

    def _slot_from(self, raw: Any, where: str) -> CertificateSlot | None:
        if raw is None:
            return None
        pem = raw.get("certificate")
        if isinstance(pem, str) and pem.strip():
            try:
                cert = x509.load_pem_x509_certificate(pem.encode())
            except ValueError:
                raise RequestError(
                    400, "ArgumentInvalid", f"{where}: not a PEM certificate"
                ) from None
            self._pems[cert.fingerprint(hashes.SHA256()).hex()] = cert
            return CertificateSlot(pem=pem)
        info = raw.get("info")
        if isinstance(info, dict) and info.get("sha256Thumbprint"):
            return CertificateSlot(thumbprint_sha256=str(info["sha256Thumbprint"]).lower())
        raise RequestError(400, "ArgumentInvalid", f"{where}: give a certificate or its info")

    @staticmethod
    def _x509(body: dict[str, Any], what: str) -> dict[str, Any]:
        attestation = body["attestation"]
        if attestation.get("type") != "x509" or not isinstance(attestation.get("x509"), dict):
            raise RequestError(
                400, "ArgumentInvalid", f"{what}: the emulator supports x509 attestation only"
            )
        x509_att: dict[str, Any] = attestation["x509"]
        return x509_att

    @staticmethod
    def _page_size(request: Request, default: int) -> int:
        raw = request.headers.get("x-ms-max-item-count")
        size = int(raw) if raw else default
        if size < 1:
            raise RequestError(400, "ArgumentInvalid", "x-ms-max-item-count must be at least 1")
        return size

    @staticmethod
    def _page_response(items: list[Any], token: str | None, item_type: str, size: int) -> Response:
        headers = {"x-ms-item-type": item_type, "x-ms-max-item-count": str(size)}
        if token:
            headers["x-ms-continuation"] = token
        return _json_response(items, 200, headers)

    @staticmethod
    def _same_id(body: dict[str, Any], field: str, path_value: str) -> None:
        value = body.get(field)
        if value is not None and value != path_value:
            raise RequestError(
                400, "ArgumentInvalid", f"{field} {value!r} differs from the path's {path_value!r}"
            )

    # ------------------------------------------------------------------ DPS

    def _individual_json(self, e: IndividualEnrollment) -> dict[str, Any]:
        certs = {
            name: value
            for name, value in (
                ("primary", self._slot_json("individuals", e.registration_id, e.primary)),
                ("secondary", self._slot_json("individuals", e.registration_id, e.secondary)),
            )
            if value is not None
        }
        body: dict[str, Any] = {
            "capabilities": {"iotEdge": False},
            **(e.document or {}),  # the operator's fields, as stored
            "registrationId": e.registration_id,
            "attestation": {"type": "x509", "x509": {"clientCertificates": certs}},
            "provisioningStatus": e.provisioning_status.value,
            "reprovisionPolicy": {
                "updateHubAssignment": e.reprovision_update_hub_assignment,
                "migrateDeviceData": e.reprovision_migrate_data,
            },
            "etag": e.etag,
        }
        if e.device_id:
            body["deviceId"] = e.device_id
        if e.iot_hub_host_name:
            body["iotHubHostName"] = e.iot_hub_host_name
        return body

    def get_individual(self, request: Request, args: dict[str, str], body: Any) -> Response:
        e = self.dps.get_individual(args["id"])
        return _json_response(self._individual_json(e), 200, _etag_headers(e.etag))

    def _enrollment_from(
        self, body: dict[str, Any], rid: str, etag: str | None
    ) -> IndividualEnrollment:
        self._same_id(body, "registrationId", rid)
        certs = self._x509(body, "enrollment").get("clientCertificates")
        if not isinstance(certs, dict):
            raise RequestError(400, "ArgumentInvalid", "enrollment: x509.clientCertificates needed")
        policy = body.get("reprovisionPolicy") or {}
        return IndividualEnrollment(
            registration_id=rid,
            device_id=body.get("deviceId"),
            primary=self._slot_from(certs.get("primary"), "clientCertificates.primary"),
            secondary=self._slot_from(certs.get("secondary"), "clientCertificates.secondary"),
            provisioning_status=ProvisioningStatus(body.get("provisioningStatus", "enabled")),
            reprovision_migrate_data=policy.get("migrateDeviceData", True),
            reprovision_update_hub_assignment=policy.get("updateHubAssignment", True),
            iot_hub_host_name=body.get("iotHubHostName"),
            etag=etag,
            document=body,
        )

    def put_individual(self, request: Request, args: dict[str, str], body: Any) -> Response:
        rid = args["id"]
        etag = self._etag_from(request, lambda: self._stored_etag("individuals", rid))
        stored = self.dps.put_individual(self._enrollment_from(body, rid, etag))
        return _json_response(self._individual_json(stored), 200, _etag_headers(stored.etag))

    def delete_individual(self, request: Request, args: dict[str, str], body: Any) -> Response:
        rid = args["id"]
        etag = self._etag_from(request, lambda: self._stored_etag("individuals", rid))
        self.dps.delete_individual(rid, etag)
        return Response(status=204)

    def query_individual(self, request: Request, args: dict[str, str], body: Any) -> Response:
        size = self._page_size(request, 100)
        page = self.dps.query_individual(size, request.headers.get("x-ms-continuation") or None)
        items = [self._individual_json(e) for e in page.items]
        return self._page_response(items, page.continuation, "Enrollment", size)

    def _group_json(self, g: EnrollmentGroup) -> dict[str, Any]:
        x509_att: dict[str, Any] = {}
        certs = {
            name: value
            for name, value in (
                ("primary", self._slot_json("groups", g.group_id, g.primary)),
                ("secondary", self._slot_json("groups", g.group_id, g.secondary)),
            )
            if value is not None
        }
        if certs:
            x509_att["signingCertificates"] = certs
        refs = {k: v for k, v in (("primary", g.ca_primary), ("secondary", g.ca_secondary)) if v}
        if refs:
            x509_att["caReferences"] = refs
        return {
            "capabilities": {"iotEdge": False},
            **(g.document or {}),  # the operator's fields, as stored
            "enrollmentGroupId": g.group_id,
            "attestation": {"type": "x509", "x509": x509_att},
            "provisioningStatus": g.provisioning_status.value,
            "reprovisionPolicy": {
                "updateHubAssignment": g.reprovision_update_hub_assignment,
                "migrateDeviceData": g.reprovision_migrate_data,
            },
            "etag": g.etag,
        }

    def get_group(self, request: Request, args: dict[str, str], body: Any) -> Response:
        g = self.dps.get_group(args["id"])
        return _json_response(self._group_json(g), 200, _etag_headers(g.etag))

    def _group_from(self, body: dict[str, Any], gid: str, etag: str | None) -> EnrollmentGroup:
        self._same_id(body, "enrollmentGroupId", gid)
        x509_att = self._x509(body, "enrollment group")
        certs = x509_att.get("signingCertificates") or {}
        refs = x509_att.get("caReferences") or {}
        policy = body.get("reprovisionPolicy") or {}
        return EnrollmentGroup(
            group_id=gid,
            primary=self._slot_from(certs.get("primary"), "signingCertificates.primary"),
            secondary=self._slot_from(certs.get("secondary"), "signingCertificates.secondary"),
            ca_primary=refs.get("primary"),
            ca_secondary=refs.get("secondary"),
            provisioning_status=ProvisioningStatus(body.get("provisioningStatus", "enabled")),
            reprovision_migrate_data=policy.get("migrateDeviceData", True),
            reprovision_update_hub_assignment=policy.get("updateHubAssignment", True),
            etag=etag,
            document=body,
        )

    def put_group(self, request: Request, args: dict[str, str], body: Any) -> Response:
        gid = args["id"]
        etag = self._etag_from(request, lambda: self._stored_etag("groups", gid))
        stored = self.dps.put_group(self._group_from(body, gid, etag))
        return _json_response(self._group_json(stored), 200, _etag_headers(stored.etag))

    # -- bulk operations, attestation mechanisms, registration queries -------------------

    def _bulk(
        self,
        body: dict[str, Any],
        key: str,
        table: str,
        build: Callable[[dict[str, Any], str, str | None], Any],
        put: Callable[[Any], Any],
        delete: Callable[[str, str | None], None],
    ) -> Response:
        """``RunBulkOperation``: at most 10 enrollments, one mode for all; each item
        succeeds or fails on its own and a failure is listed in ``errors``."""
        items = body.get("enrollments") or body.get("enrollmentGroups") or []
        if not items:
            raise RequestError(400, "ArgumentInvalid", "a bulk operation needs enrollments")
        if len(items) > MAX_BULK_ENROLLMENTS:
            raise RequestError(
                400,
                "ArgumentInvalid",
                f"a bulk operation takes at most {MAX_BULK_ENROLLMENTS} enrollments, "
                f"not {len(items)}",
            )
        mode = body["mode"]
        errors: list[dict[str, Any]] = []
        with self.dps.bulk_call(len(items)):
            self._bulk_items(items, mode, key, table, build, put, delete, errors)
        result: dict[str, Any] = {"isSuccessful": not errors}
        if errors:
            result["errors"] = errors
        return _json_response(result)

    def _bulk_items(
        self,
        items: list[Any],
        mode: str,
        key: str,
        table: str,
        build: Callable[[dict[str, Any], str, str | None], Any],
        put: Callable[[Any], Any],
        delete: Callable[[str, str | None], None],
        errors: list[dict[str, Any]],
    ) -> None:
        for item in items:
            ident = item.get(key)
            try:
                if not isinstance(ident, str) or not ident:
                    raise RequestError(400, "ArgumentInvalid", f"{key} is required")
                stored = self._stored_etag(table, ident)
                given = item.get("etag")
                given = _unquote(given) if isinstance(given, str) and given else None
                if given is not None and stored is not None and given == _unquote(stored):
                    given = stored  # the emulator's own ETag spelling
                if mode == "delete":
                    delete(ident, given)
                    continue
                if mode == "create":
                    etag = None  # exists: 409
                elif mode == "update":
                    etag = "*" if stored is not None else None  # create or replace
                else:  # updateIfMatchETag: only when the item's etag is the stored one
                    if stored is None:
                        raise NotFoundError(f"{ident} does not exist")
                    etag = given if given is not None else ""  # no etag never matches
                put(build(item, ident, etag))
            except RequestError as exc:
                errors.append(_bulk_error(ident, exc.status, exc.message))
            except NotFoundError as exc:
                errors.append(_bulk_error(ident, 404, str(exc)))
            except ConflictError as exc:
                errors.append(_bulk_error(ident, 409, str(exc)))
            except ConcurrencyError as exc:
                errors.append(_bulk_error(ident, 412, str(exc)))
            except (InvalidRequestError, ValueError) as exc:
                errors.append(_bulk_error(ident, 400, str(exc)))

    def bulk_individual(self, request: Request, args: dict[str, str], body: Any) -> Response:
        return self._bulk(
            body,
            "registrationId",
            "individuals",
            self._enrollment_from,
            self.dps.put_individual,
            self.dps.delete_individual,
        )

    def bulk_groups(self, request: Request, args: dict[str, str], body: Any) -> Response:
        return self._bulk(
            body,
            "enrollmentGroupId",
            "groups",
            self._group_from,
            self.dps.put_group,
            self.dps.delete_group,
        )

    def individual_attestation(self, request: Request, args: dict[str, str], body: Any) -> Response:
        e = self.dps.get_individual(args["id"])
        return _json_response(self._individual_json(e)["attestation"])

    def group_attestation(self, request: Request, args: dict[str, str], body: Any) -> Response:
        g = self.dps.get_group(args["id"])
        return _json_response(self._group_json(g)["attestation"])

    def query_registrations(self, request: Request, args: dict[str, str], body: Any) -> Response:
        size = self._page_size(request, 100)
        page = self.dps.query_registrations(
            args["id"], size, request.headers.get("x-ms-continuation") or None
        )
        items = [self._registration_json(r) for r in page.items]
        return self._page_response(items, page.continuation, "DeviceRegistration", size)

    def delete_group(self, request: Request, args: dict[str, str], body: Any) -> Response:
        gid = args["id"]
        self.dps.delete_group(
            gid, self._etag_from(request, lambda: self._stored_etag("groups", gid))
        )
        return Response(status=204)

    def query_groups(self, request: Request, args: dict[str, str], body: Any) -> Response:
        size = self._page_size(request, 100)
        page = self.dps.query_groups(size, request.headers.get("x-ms-continuation") or None)
        items = [self._group_json(g) for g in page.items]
        return self._page_response(items, page.continuation, "EnrollmentGroup", size)

    @staticmethod
    def _registration_json(r: RegistrationState) -> dict[str, Any]:
        body = {
            "registrationId": r.registration_id,
            "status": r.status,
            "assignedHub": r.assigned_hub,
            "deviceId": r.device_id,
            "lastUpdatedDateTimeUtc": _iso(r.last_updated),
            "errorCode": r.error_code,
            "errorMessage": r.error_message,
            "etag": r.etag,
        }
        return {k: v for k, v in body.items() if v is not None}

    def get_registration(self, request: Request, args: dict[str, str], body: Any) -> Response:
        r = self.dps.get_registration_state(args["id"])
        return _json_response(self._registration_json(r), 200, _etag_headers(r.etag))

    def delete_registration(self, request: Request, args: dict[str, str], body: Any) -> Response:
        rid = args["id"]

        def current() -> str | None:
            state = self._record("registrations", rid)
            etag = getattr(state, "etag", None)
            return etag if isinstance(etag, str) else None

        self.dps.delete_registration_state(rid, self._etag_from(request, current))
        return Response(status=204)

    # ------------------------------------------------------------------ hub

    @staticmethod
    def _device_json(d: DeviceIdentity) -> dict[str, Any]:
        auth: dict[str, Any] = {"type": d.auth_type.value}
        thumbs = {
            k: v
            for k, v in (
                ("primaryThumbprint", d.primary_thumbprint),
                ("secondaryThumbprint", d.secondary_thumbprint),
            )
            if v
        }
        auth["x509Thumbprint"] = thumbs
        body: dict[str, Any] = {
            "capabilities": {"iotEdge": False},
            **(d.document or {}),  # the operator's fields, as stored
            "deviceId": d.device_id,
            "etag": d.etag,
            "connectionState": d.connection_state,
            "status": d.status.value,
            "authentication": auth,
            "cloudToDeviceMessageCount": 0,
        }
        if d.status_reason:
            body["statusReason"] = d.status_reason
        return body

    def get_device(self, request: Request, args: dict[str, str], body: Any) -> Response:
        d = self.hub.get_device(args["id"])
        return _json_response(self._device_json(d), 200, _etag_headers(d.etag))

    def put_device(self, request: Request, args: dict[str, str], body: Any) -> Response:
        did = args["id"]
        if body.get("deviceId") is None:
            raise RequestError(400, "ArgumentNull", "deviceId is required")
        self._same_id(body, "deviceId", did)
        auth = body.get("authentication") or {}
        auth_type = auth.get("type", "sas")
        if auth_type not in (AuthType.SELF_SIGNED.value, AuthType.CERTIFICATE_AUTHORITY.value):
            raise RequestError(
                400,
                "ArgumentInvalid",
                f"the emulator supports X.509 identities only, not {auth_type}",
            )
        thumbs = auth.get("x509Thumbprint") or {}
        identity = DeviceIdentity(
            device_id=did,
            status=DeviceStatus(body.get("status", "enabled")),
            auth_type=AuthType(auth_type),
            primary_thumbprint=thumbs.get("primaryThumbprint") or None,
            secondary_thumbprint=thumbs.get("secondaryThumbprint") or None,
            status_reason=body.get("statusReason") or None,
            document=body,
        )
        if _hub_if_match(request) is None:
            stored = self.hub.create_device(identity)  # the hub: 409 when it exists
        else:

            def current() -> str | None:
                record = self._record("devices", did)
                etag = getattr(record, "etag", None)
                return etag if isinstance(etag, str) else None

            identity.etag = self._etag_from(request, current)
            stored = self.hub.update_device(identity)
        return _json_response(self._device_json(stored), 200, _etag_headers(stored.etag))

    def list_devices(self, request: Request, args: dict[str, str], body: Any) -> Response:
        raw = request.args.get("top")
        top = int(raw) if raw else 1000
        if not 1 <= top <= 1000:
            raise RequestError(400, "ArgumentInvalid", "top must be 1-1000")
        return _json_response([self._device_json(d) for d in self.hub.list_devices(top)])

    def delete_device(self, request: Request, args: dict[str, str], body: Any) -> Response:
        did = args["id"]
        header = _hub_if_match(request)
        etag = None
        if header is not None and _unquote(header) != "*":
            record = self._record("devices", did)
            stored = getattr(record, "etag", None)
            etag = stored if stored is not None and _unquote(header) == stored else _unquote(header)
        self.hub.delete_device(did, etag)
        return Response(status=204)

    @staticmethod
    def _twin_json(t: Twin) -> dict[str, Any]:
        return {
            "deviceId": t.device_id,
            "etag": t.etag,
            "status": t.status.value,
            "connectionState": t.connection_state,
            "tags": t.tags,
            "properties": {
                "desired": {**t.desired, "$version": t.desired_version},
                "reported": {**t.reported, "$version": t.reported_version},
            },
        }

    def get_twin(self, request: Request, args: dict[str, str], body: Any) -> Response:
        t = self.hub.get_twin(args["id"])
        return _json_response(self._twin_json(t), 200, _etag_headers(t.etag))

    def patch_twin(self, request: Request, args: dict[str, str], body: Any) -> Response:
        did = args["id"]
        props = body.get("properties") or {}
        if "reported" in props:
            raise RequestError(400, "ArgumentInvalid", "reported properties are read-only")
        extra = set(body) - {"properties", "tags", "deviceId", "etag"}
        if extra:
            raise RequestError(
                400,
                "ArgumentInvalid",
                f"the emulator patches tags and desired only: {sorted(extra)}",
            )
        self._same_id(body, "deviceId", did)
        header = _hub_if_match(request)
        etag = None if header is None or _unquote(header) == "*" else _unquote(header)
        twin: Twin | None = None
        if isinstance(body.get("tags"), dict) and body["tags"]:
            update_tags = getattr(self.hub, "update_tags", None)
            if update_tags is None:
                raise RequestError(501, "NotImplemented", "the emulator cannot patch tags")
            twin = update_tags(did, body["tags"], etag)
            etag = None  # one ETag check per request
        desired = props.get("desired")
        if (isinstance(desired, dict) and desired) or twin is None:
            twin = self.hub.patch_desired(did, desired if isinstance(desired, dict) else {}, etag)
        return _json_response(self._twin_json(twin), 200, _etag_headers(twin.etag))

    def query_twins(self, request: Request, args: dict[str, str], body: Any) -> Response:
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise RequestError(400, "ArgumentNull", "query is required")
        size = self._page_size(request, 100)
        page = self.hub.query_twins(query, size, request.headers.get("x-ms-continuation") or None)
        items = [self._twin_json(t) for t in page.items]
        return self._page_response(items, page.continuation, "Twin", size)

    def invoke_method(self, request: Request, args: dict[str, str], body: Any) -> Response:
        name = body.get("methodName")
        if not isinstance(name, str) or not name:
            raise RequestError(400, "ArgumentNull", "methodName is required")
        result = self.hub.invoke_method(
            args["deviceId"],
            name,
            body.get("payload"),
            body.get("connectTimeoutInSeconds", 0),
            body.get("responseTimeoutInSeconds", 30),
        )
        return _json_response({"status": result.status, "payload": result.payload})

    @staticmethod
    def _job_json(job: JobStatus, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "jobId": job.job_id,
            "type": job.type,
            "status": job.status,
            "deviceJobStatistics": {
                "deviceCount": job.succeeded + job.failed + job.pending,
                "failedCount": job.failed,
                "succeededCount": job.succeeded,
                "runningCount": 0,
                "pendingCount": job.pending,
            },
        }
        body.update(extra or {})
        return body

    def create_job(self, request: Request, args: dict[str, str], body: Any) -> Response:
        jid = args["id"]
        self._same_id(body, "jobId", jid)
        if body.get("type") != "scheduleDeviceMethod":
            raise RequestError(
                400, "ArgumentInvalid", "the emulator schedules scheduleDeviceMethod jobs only"
            )
        method = body.get("cloudToDeviceMethod") or {}
        if not method.get("methodName"):
            raise RequestError(400, "ArgumentNull", "cloudToDeviceMethod.methodName is required")
        condition = body.get("queryCondition")
        if not condition:
            raise RequestError(400, "ArgumentNull", "queryCondition is required")
        start = body.get("startTime")
        start_time = datetime.fromisoformat(start) if start else None
        job = self.hub.schedule_method_job(
            jid,
            condition,
            method["methodName"],
            method.get("payload"),
            start_time,
            body.get("maxExecutionTimeInSeconds", 3600),
        )
        extra = {
            "queryCondition": condition,
            "cloudToDeviceMethod": method,
            "maxExecutionTimeInSeconds": body.get("maxExecutionTimeInSeconds", 3600),
        }
        if start:
            extra["startTime"] = start
        return _json_response(self._job_json(job, extra))

    def get_job(self, request: Request, args: dict[str, str], body: Any) -> Response:
        return _json_response(self._job_json(self.hub.get_job(args["id"])))

    def query_jobs(self, request: Request, args: dict[str, str], body: Any) -> Response:
        """``Jobs_QueryScheduledJobs``: a QueryResult of type ``jobResponse``, filtered by
        the optional ``jobType`` and ``jobStatus`` (one page: the emulator keeps few jobs)."""
        job_type = request.args.get("jobType") or None
        job_status = request.args.get("jobStatus") or None
        items = [
            self._job_json(job)
            for job in self.hub.list_jobs()
            if (job_type is None or job.type == job_type)
            and (job_status is None or job.status == job_status)
        ]
        return _json_response({"type": "jobResponse", "items": items})


def _dps_code(status: int, name: str) -> int:
    codes = {
        400: 400004,
        401: 401002,
        404: 404201,
        405: 405001,
        409: 409201,
        412: 412201,
        415: 415001,
        429: 429001,
        501: 501001,
    }
    return codes.get(status, status * 1000)


# --------------------------------------------------------------------------- server


@dataclass
class RunningServer:
    """A front end listening on loopback; ``url`` for DPS, ``host`` (host:port) for the hub."""

    url: str
    host: str
    app: FleetHttpApp
    _server: BaseWSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    emulator: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningServer:
    """Serve ``emulator``'s DPS and hub APIs on ``host:port`` (0: OS picks): HTTP, or
    HTTPS with ``ssl_context`` (see :func:`local.emulator.http.tls.loopback_tls`), which
    Microsoft's service SDKs need (azure-iot-hub builds every URL as ``https://``)."""
    app = FleetHttpApp(emulator)
    server = make_server(host, port, app, threaded=True, ssl_context=ssl_context)
    bound = f"{host}:{server.server_port}"
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"fleet-http-{server.server_port}",
        daemon=True,
    )
    thread.start()
    scheme = "https" if ssl_context is not None else "http"
    logger.info("fleet emulator REST front end on %s://%s", scheme, bound)
    return RunningServer(f"{scheme}://{bound}", bound, app, server, thread)
