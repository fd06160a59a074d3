"""Plumbing shared by the DPS and IoT Hub adapters: one azure-core pipeline per service.

Both adapters talk to the services' REST APIs through ``azure.core.PipelineClient`` with
the standard policies (request id, user agent, retry, logging) and one authentication
policy chosen from the credential:

- a ``TokenCredential`` (managed identity, ``DefaultAzureCredential``): bearer token for
  the service's scope;
- an ``AzureSasCredential``: its signature is sent as the ``Authorization`` header
  (``SharedAccessSignature sr=...&sig=...&se=...&skn=...``);
- an ``AzureNamedKeyCredential`` (shared access policy name and key): a SAS token is
  made per request, valid for one hour.

Plain ``http`` is accepted only for loopback hosts (the local emulator); everything else
must be ``https``. 429 and 503 are not retried inside the pipeline: they surface as
:class:`~shared.domain.errors.ThrottledError` with the service's ``Retry-After`` so the
caller's rate budget decides when to come back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import urllib.parse
from typing import Any, NoReturn

from azure.core import PipelineClient
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import (
    BearerTokenCredentialPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    NetworkTraceLoggingPolicy,
    RequestIdPolicy,
    RetryPolicy,
    SansIOHTTPPolicy,
    UserAgentPolicy,
)
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest, HttpResponse

from shared.adapters.retry_after import retry_after_seconds
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAS_TOKEN_TTL_SECONDS = 3600
DEFAULT_RETRY_AFTER_SECONDS = 10.0
THROTTLE_STATUSES = frozenset({429, 503})


class _AllowLoopbackHttpPolicy(SansIOHTTPPolicy[Any, Any]):
    """Lets the bearer-token policy send a token over plain http to a loopback host only."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        parsed = urllib.parse.urlsplit(request.http_request.url)
        if parsed.scheme == "http" and (parsed.hostname or "") in LOOPBACK_HOSTS:
            request.context["enforce_https"] = False


class SasCredentialPolicy(SansIOHTTPPolicy[Any, Any]):
    """Puts a ``SharedAccessSignature`` into the ``Authorization`` header."""

    def __init__(
        self, credential: AzureSasCredential | AzureNamedKeyCredential, resource: str
    ) -> None:
        self._credential = credential
        self._resource = resource

    def on_request(self, request: PipelineRequest[Any]) -> None:
        if isinstance(self._credential, AzureSasCredential):
            token = self._credential.signature
        else:
            name, key = self._credential.named_key
            token = make_sas_token(self._resource, name, key)
        request.http_request.headers["Authorization"] = token


def make_sas_token(
    resource: str, policy_name: str, key_b64: str, ttl: int = SAS_TOKEN_TTL_SECONDS
) -> str:
    """A service SAS token for ``resource`` (a host name) signed with a shared access key."""
    expiry = int(time.time()) + ttl
    sr = urllib.parse.quote(resource.lower(), safe="")
    signed = f"{sr}\n{expiry}".encode()
    try:
        key = base64.b64decode(key_b64, validate=True)
    except ValueError as exc:
        raise ValueError("the shared access key is not valid base64") from exc
    sig = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return (
        f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}"
        f"&se={expiry}&skn={urllib.parse.quote(policy_name, safe='')}"
    )


class _RetryPolicy(RetryPolicy[Any, Any]):
    """The standard retry policy, except that throttling (429/503) is left to the caller."""

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        if response.http_response.status_code in THROTTLE_STATUSES:
            return False
        return bool(super().is_retry(settings, response))


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless https or http to loopback."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parsed.scheme == "http" and parsed.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"plain http is allowed only for a loopback emulator, not {url!r}")
    return url.rstrip("/")


class ServiceClient:
    """One service endpoint behind an authenticated azure-core pipeline."""

    def __init__(
        self,
        base_url: str,
        credential: Any,
        scope: str,
        *,
        transport: HttpTransport[Any, Any] | None = None,
        retry_total: int = 3,
        user_agent: str = "certroll",
    ) -> None:
        self.base_url = check_base_url(base_url)
        auth: SansIOHTTPPolicy[Any, Any] | BearerTokenCredentialPolicy[Any, Any]
        if isinstance(credential, AzureSasCredential | AzureNamedKeyCredential):
            host = urllib.parse.urlsplit(self.base_url).netloc
            auth = SasCredentialPolicy(credential, host)
        elif hasattr(credential, "get_token"):
            auth = BearerTokenCredentialPolicy(credential, scope)
        else:
            raise TypeError(
                "credential must be a TokenCredential, AzureSasCredential or "
                "AzureNamedKeyCredential"
            )
        policies: list[Any] = [
            RequestIdPolicy(),
            HeadersPolicy(),
            UserAgentPolicy(user_agent),
            _RetryPolicy(retry_total=retry_total, retry_backoff_factor=0.5),
            _AllowLoopbackHttpPolicy(),
            auth,
            NetworkTraceLoggingPolicy(),
            HttpLoggingPolicy(),
        ]
        self._client: PipelineClient[Any, Any] = PipelineClient(
            self.base_url, policies=policies, transport=transport
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        read_timeout: float | None = None,
    ) -> HttpResponse:
        """Send one request; a failure before any response becomes ServiceError (no status)."""
        all_headers = {"Accept": "application/json"}
        all_headers.update(headers or {})
        request = HttpRequest(
            method, self.base_url + path, params=params, headers=all_headers, json=json
        )
        try:
            options: dict[str, Any] = {}
            if read_timeout is not None:
                options["read_timeout"] = read_timeout
            response: HttpResponse = self._client.send_request(request, **options)
            response.read()
        except AzureError as exc:
            logger.warning("%s %s failed before a response: %s", method, path, exc)
            raise ServiceError(f"{method} {path}: {exc}") from exc
        return response

    def close(self) -> None:
        self._client.close()


def retry_after(response: HttpResponse, default: float = DEFAULT_RETRY_AFTER_SECONDS) -> float:
    """Seconds from the response's ``Retry-After`` (delta-seconds or HTTP-date) or
    ``x-ms-retry-after-ms`` header, else ``default``."""
    return retry_after_seconds(response.headers, default)


def raise_status_error(
    response: HttpResponse, message: str, *, throttled: bool = False
) -> NoReturn:
    """Raise the typed error for a non-2xx ``response``: 404, 409, 412, throttling (429, 503
    or ``throttled``) and anything else as :class:`ServiceError`."""
    status = response.status_code
    if status == 404:
        raise NotFoundError(message)
    if status == 409:
        raise ConflictError(message)
    if status == 412:
        raise ConcurrencyError(message)
    if throttled or status in THROTTLE_STATUSES:
        raise ThrottledError(message, retry_after=retry_after(response))
    raise ServiceError(message, status=status)


def json_body(response: HttpResponse) -> Any:
    """The response's JSON, or None when the body is empty or not JSON."""
    text = response.text()
    if not text:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def quote_etag(etag: str) -> str:
    """An ETag as an If-Match value, always quoted, the wildcard too (``"*"``).

    IoT Hub ignores an unquoted ``*`` (azure-iot-sdk-python PR #754, azure-iot-sdk-node
    PR #606 quote it for that reason); DPS takes the quoted form as well.
    """
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"'):
        return etag
    return f'"{etag}"'


def unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return value or None


def path_id(value: str) -> str:
    """A resource id made safe for a URL path segment."""
    if not value or not value.strip():
        raise InvalidRequestError("invalid_id", "an empty id cannot name a resource")
    return urllib.parse.quote(value, safe="")
