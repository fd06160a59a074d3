"""IoT Hub identities, twins, direct methods and jobs over the hub's service REST API.

``IotHubRegistry`` implements :class:`shared.ports.DeviceRegistry` with azure-core's
``PipelineClient``, like the DPS adapter (``azure-iot-hub`` hard-codes ``https://`` and
builds on msrest; docs/fleet-adapters.md says why it is not used). Every failure is one
of :mod:`shared.domain.errors`.
"""

from __future__ import annotations

import copy
import json as jsonlib
import logging
import re
from datetime import UTC, datetime
from typing import Any

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpResponse

from shared.adapters._azure_rest import (
    ServiceClient,
    json_body,
    path_id,
    quote_etag,
    raise_status_error,
    retry_after,
)
from shared.clock import SystemClock
from shared.domain.errors import (
    DeviceOfflineError,
    InvalidRequestError,
    JobQuotaExceededError,
    ServiceError,
)
from shared.domain.model import (
    AuthType,
    DeviceIdentity,
    DeviceStatus,
    JobStatus,
    MethodResult,
    Page,
    Twin,
)
from shared.ports import Clock, DeviceRegistry

logger = logging.getLogger(__name__)

IOTHUB_SCOPE = "https://iothubs.azure.net/.default"
#: The service api-version azure-iot-hub 2.7 sends (its generated client pins it); the
#: Device of 2021-04-12 carries ``parentScopes``, which 2020-03-13 does not define.
IOTHUB_API_VERSION = "2021-04-12"
#: Device fields the hub maintains itself; a replace does not send them back.
SERVICE_MANAGED_FIELDS = frozenset(
    {
        "generationId",
        "connectionState",
        "connectionStateUpdatedTime",
        "statusUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
    }
)
DEVICE_NOT_ONLINE = 404103
GATEWAY_TIMEOUT = 504101
#: "429004 ThrottlingMaxActiveJobCountExceeded: The maximum active job count has been
#: exceeded" (IoT Hub troubleshoot-error-codes).
MAX_ACTIVE_JOBS_EXCEEDED = 429004
ACTIVE_JOB_STATES = frozenset({"queued", "scheduled", "running"})
_ERROR_NAME = re.compile(r"ErrorCode:\s*([A-Za-z0-9]+)")
_JOB_STATUS = {"enqueued": "queued"}


def hub_error_code(response: HttpResponse) -> tuple[int | None, str | None, str]:
    """(numeric code, error name, message) from an IoT Hub error response.

    The hub answers ``{"Message": "ErrorCode:DeviceNotFound;...", "ExceptionMessage": ...}``
    or, for newer errors, a ``Message`` that is itself JSON ``{"errorCode": 404103, ...}``;
    the ``iothub-errorcode`` header names the error too.
    """
    body = json_body(response)
    name = response.headers.get("iothub-errorcode")
    code: int | None = None
    text = ""
    if isinstance(body, dict):
        message = body.get("Message") or body.get("message") or ""
        text = str(message)
        if isinstance(body.get("errorCode"), int):
            code = body["errorCode"]
        if isinstance(message, str) and message.startswith("{"):
            try:
                inner = jsonlib.loads(message)
            except ValueError:
                inner = None
            if isinstance(inner, dict):
                if isinstance(inner.get("errorCode"), int):
                    code = inner["errorCode"]
                text = str(inner.get("message") or text)
        elif isinstance(message, str):
            found = _ERROR_NAME.search(message)
            if found and not name:
                name = found.group(1)
    return code, name, text


def raise_for_hub(response: HttpResponse, what: str, *, method_call: bool = False) -> None:
    """Map an IoT Hub error response to a typed error; returns quietly on 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    code, name, text = hub_error_code(response)
    message = f"IoT Hub {what}: HTTP {status}"
    message += "".join(f" {part}" for part in (code, name, text) if part)
    if method_call and (
        code in (DEVICE_NOT_ONLINE, GATEWAY_TIMEOUT)
        or name in ("DeviceNotOnline", "GatewayTimeout")
        or status == 504
    ):
        raise DeviceOfflineError(message)
    if code == MAX_ACTIVE_JOBS_EXCEEDED or name == "ThrottlingMaxActiveJobCountExceeded":
        raise JobQuotaExceededError(message, retry_after=retry_after(response))
    raise_status_error(response, message, throttled=code == 429001 or name == "ThrottlingException")


def _without_meta(props: Any) -> dict[str, Any]:
    if not isinstance(props, dict):
        return {}
    return {k: v for k, v in props.items() if not k.startswith("$")}


def _lower(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def twin_from(body: Any) -> Twin:
    if not isinstance(body, dict) or not isinstance(body.get("deviceId"), str):
        raise ServiceError("IoT Hub returned a twin without deviceId")
    props = body.get("properties") or {}
    desired = props.get("desired") or {}
    reported = props.get("reported") or {}
    return Twin(
        device_id=body["deviceId"],
        desired=_without_meta(desired),
        reported=_without_meta(reported),
        desired_version=int(desired.get("$version", 0)),
        reported_version=int(reported.get("$version", 0)),
        tags=dict(body.get("tags") or {}),
        status=DeviceStatus(body.get("status", "enabled")),
        connection_state=body.get("connectionState", "Disconnected"),
        etag=body.get("etag"),
    )


def device_from(body: Any) -> DeviceIdentity:
    if not isinstance(body, dict) or not isinstance(body.get("deviceId"), str):
        raise ServiceError("IoT Hub returned a device without deviceId")
    auth = body.get("authentication") or {}
    thumbs = auth.get("x509Thumbprint") or {}
    auth_type = auth.get("type", AuthType.SELF_SIGNED.value)
    try:
        parsed_auth = AuthType(auth_type)
    except ValueError:
        raise ServiceError(f"device {body['deviceId']} uses {auth_type} authentication") from None
    return DeviceIdentity(
        device_id=body["deviceId"],
        status=DeviceStatus(body.get("status", "enabled")),
        auth_type=parsed_auth,
        primary_thumbprint=_lower(thumbs.get("primaryThumbprint")),
        secondary_thumbprint=_lower(thumbs.get("secondaryThumbprint")),
        status_reason=body.get("statusReason") or None,
        connection_state=body.get("connectionState", "Disconnected"),
        etag=body.get("etag"),
        document=body,
    )


def job_from(body: Any) -> JobStatus:
    if not isinstance(body, dict) or not isinstance(body.get("jobId"), str):
        raise ServiceError("IoT Hub returned a job without jobId")
    stats = body.get("deviceJobStatistics") or {}
    status = str(body.get("status", "unknown"))
    return JobStatus(
        job_id=body["jobId"],
        status=_JOB_STATUS.get(status, status),
        type=str(body.get("type", "scheduleDeviceMethod")),
        succeeded=int(stats.get("succeededCount", 0)),
        failed=int(stats.get("failedCount", 0)),
        pending=int(stats.get("pendingCount", 0)) + int(stats.get("runningCount", 0)),
    )


class IotHubRegistry(DeviceRegistry):
    """The hub's identity registry, twins, direct methods and scheduled jobs.

    ``host`` is ``<hub>.azure-devices.net`` (or ``127.0.0.1:<port>`` with ``scheme="http"``
    for the local emulator). ``credential`` is a ``TokenCredential`` (scope
    ``https://iothubs.azure.net/.default``), an ``AzureSasCredential`` or an
    ``AzureNamedKeyCredential`` (shared access policy name and key). ``clock`` gives the
    start time of jobs scheduled without one.
    """

    def __init__(
        self,
        host: str,
        credential: Any,
        *,
        transport: HttpTransport[Any, Any] | None = None,
        scheme: str = "https",
        api_version: str = IOTHUB_API_VERSION,
        clock: Clock | None = None,
        retry_total: int = 3,
    ) -> None:
        if "/" in host or not host:
            raise ValueError(f"host must be a host name (and port), not {host!r}")
        self._client = ServiceClient(
            f"{scheme}://{host}",
            credential,
            IOTHUB_SCOPE,
            transport=transport,
            retry_total=retry_total,
        )
        self._api_version = api_version
        self._clock = clock or SystemClock()

    @property
    def host(self) -> str:
        return self._client.base_url.split("://", 1)[1]

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        method_call: bool = False,
        read_timeout: float | None = None,
    ) -> HttpResponse:
        response = self._client.send(
            method,
            path,
            params={"api-version": self._api_version},
            headers=headers,
            json=json,
            read_timeout=read_timeout,
        )
        raise_for_hub(response, what, method_call=method_call)
        return response

    # ------------------------------------------------------------------ identities

    def get_device(self, device_id: str) -> DeviceIdentity:
        response = self._call("GET", f"/devices/{path_id(device_id)}", f"get device {device_id}")
        return device_from(json_body(response))

    @staticmethod
    def _device_body(identity: DeviceIdentity, *, create: bool = False) -> dict[str, Any]:
        """The PUT body: the device as read, with only certroll's fields changed.

        ``PUT /devices/{id}`` replaces the identity, so ``capabilities``, ``deviceScope``
        and ``parentScopes`` an operator set are sent back as they were read.
        """
        body: dict[str, Any] = (
            copy.deepcopy(identity.document) if isinstance(identity.document, dict) else {}
        )
        for name in SERVICE_MANAGED_FIELDS:
            body.pop(name, None)
        read_auth = body.get("authentication")
        auth: dict[str, Any] = {  # the mechanism is certroll's; anything else is kept
            k: v
            for k, v in (read_auth.items() if isinstance(read_auth, dict) else ())
            if k not in ("type", "x509Thumbprint", "symmetricKey")
        }
        auth["type"] = identity.auth_type.value
        if identity.auth_type is AuthType.SELF_SIGNED:
            if not identity.primary_thumbprint:
                raise InvalidRequestError(
                    "thumbprint_missing",
                    f"device {identity.device_id}: selfSigned needs a primary thumbprint",
                )
            thumbs = {"primaryThumbprint": identity.primary_thumbprint}
            if identity.secondary_thumbprint:
                thumbs["secondaryThumbprint"] = identity.secondary_thumbprint
            auth["x509Thumbprint"] = thumbs
        body["deviceId"] = identity.device_id
        body["status"] = identity.status.value
        body["authentication"] = auth
        if create and "capabilities" not in body:
            body["capabilities"] = {"iotEdge": False}
        if identity.status_reason:
            body["statusReason"] = identity.status_reason
        else:
            body.pop("statusReason", None)
        if identity.etag and not create:
            body["etag"] = identity.etag
        else:
            body.pop("etag", None)
        return body

    def update_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        body = self._device_body(identity)
        response = self._call(
            "PUT",
            f"/devices/{path_id(identity.device_id)}",
            f"update device {identity.device_id}",
            json=body,
            headers={"If-Match": quote_etag(identity.etag or "*")},
        )
        stored = device_from(json_body(response))
        logger.info(
            "hub identity %s updated: status %s, etag %s",
            identity.device_id,
            stored.status.value,
            stored.etag,
        )
        return stored

    def create_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        body = self._device_body(identity, create=True)
        response = self._call(
            "PUT",
            f"/devices/{path_id(identity.device_id)}",
            f"create device {identity.device_id}",
            json=body,
        )
        stored = device_from(json_body(response))
        logger.info("hub identity %s created", identity.device_id)
        return stored

    # ------------------------------------------------------------------ twins

    def get_twin(self, device_id: str) -> Twin:
        response = self._call("GET", f"/twins/{path_id(device_id)}", f"get twin {device_id}")
        return twin_from(json_body(response))

    def patch_desired(self, device_id: str, patch: dict[str, Any], etag: str | None = None) -> Twin:
        if not isinstance(patch, dict):
            raise InvalidRequestError("patch_invalid", "a desired patch must be a JSON object")
        response = self._call(
            "PATCH",
            f"/twins/{path_id(device_id)}",
            f"patch twin {device_id}",
            json={"properties": {"desired": patch}},
            headers={"If-Match": quote_etag(etag)} if etag else None,
        )
        return twin_from(json_body(response))

    def query_twins(
        self, query: str, page_size: int = 1000, continuation: str | None = None
    ) -> Page[Twin]:
        if page_size < 1:
            raise InvalidRequestError("page_size", "page size must be at least 1")
        headers = {"x-ms-max-item-count": str(page_size)}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = self._call(
            "POST", "/devices/query", "query twins", json={"query": query}, headers=headers
        )
        body = json_body(response)
        if not isinstance(body, list):
            raise ServiceError("IoT Hub twin query returned no list")
        return Page(
            [twin_from(item) for item in body], response.headers.get("x-ms-continuation") or None
        )

    # ------------------------------------------------------------------ methods and jobs

    def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        connect_timeout: int = 10,
        response_timeout: int = 30,
    ) -> MethodResult:
        body = {
            "methodName": method_name,
            "payload": payload,
            "connectTimeoutInSeconds": connect_timeout,
            "responseTimeoutInSeconds": response_timeout,
        }
        response = self._call(
            "POST",
            f"/twins/{path_id(device_id)}/methods",
            f"invoke {method_name} on {device_id}",
            json=body,
            method_call=True,
            read_timeout=float(connect_timeout + response_timeout + 10),
        )
        result = json_body(response)
        if not isinstance(result, dict) or not isinstance(result.get("status"), int):
            raise ServiceError(f"IoT Hub method {method_name} on {device_id}: no status")
        logger.info("method %s on %s answered %s", method_name, device_id, result["status"])
        return MethodResult(status=result["status"], payload=result.get("payload"))

    def schedule_method_job(
        self,
        job_id: str,
        query_condition: str,
        method_name: str,
        payload: Any,
        start_time: datetime | None = None,
        max_execution_seconds: int = 3600,
    ) -> JobStatus:
        body = {
            "jobId": job_id,
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {
                "methodName": method_name,
                "payload": payload,
                "connectTimeoutInSeconds": 10,
                "responseTimeoutInSeconds": 30,
            },
            "queryCondition": query_condition,
            "startTime": _iso(start_time or self._clock.now()),
            "maxExecutionTimeInSeconds": max_execution_seconds,
        }
        response = self._call(
            "PUT", f"/jobs/v2/{path_id(job_id)}", f"schedule job {job_id}", json=body
        )
        status = job_from(json_body(response))
        logger.info("hub job %s scheduled (%s) for %s", job_id, method_name, query_condition)
        return status

    def get_job(self, job_id: str) -> JobStatus:
        response = self._call("GET", f"/jobs/v2/{path_id(job_id)}", f"get job {job_id}")
        return job_from(json_body(response))

    def active_jobs(self) -> list[JobStatus]:
        """Queued, scheduled and running jobs (``GET /jobs/v2/query``, every page)."""
        jobs: list[JobStatus] = []
        continuation: str | None = None
        for _ in range(1000):
            headers = {"x-ms-continuation": continuation} if continuation else None
            response = self._call("GET", "/jobs/v2/query", "query jobs", headers=headers)
            body = json_body(response)
            items = body.get("items") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise ServiceError("IoT Hub job query returned no items")
            jobs.extend(job for job in map(job_from, items) if job.status in ACTIVE_JOB_STATES)
            continuation = (
                (body.get("continuationToken") if isinstance(body, dict) else None)
                or response.headers.get("x-ms-continuation")
                or None
            )
            if not continuation:
                break
        return jobs
