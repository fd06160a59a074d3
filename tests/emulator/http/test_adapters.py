"""The DPS and IoT Hub adapters: credentials, transport rules and error mapping."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential

from local.emulator import FleetEmulator
from local.emulator.http import RunningServer, serve
from shared.adapters._azure_rest import make_sas_token
from shared.adapters.dps import DpsEnrollmentStore, raise_for_dps
from shared.adapters.iothub import IotHubRegistry, raise_for_hub
from shared.clock import ManualClock
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.domain.model import CertificateSlot, IndividualEnrollment

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Token:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("t", int(datetime.now(UTC).timestamp()) + 3600)


class StubResponse:
    """Just enough of ``azure.core.rest.HttpResponse`` for the error mappers."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status_code = status
        self.headers = headers or {}
        self._text = "" if body is None else json.dumps(body)

    def text(self) -> str:
        return self._text

    def json(self) -> Any:
        return json.loads(self._text)


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = serve(FleetEmulator(ManualClock(T0), enforce_limits=False))
    yield running
    running.close()


# --------------------------------------------------------------------------- credentials


def test_sas_credentials_are_sent_as_authorization(server: RunningServer) -> None:
    sas = AzureSasCredential("SharedAccessSignature sr=x&sig=y&se=1&skn=service")
    with pytest.raises(NotFoundError):  # past the 401 check: the enrollment is absent
        DpsEnrollmentStore(server.url, sas, retry_total=0).get_individual("nobody")
    key = base64.b64encode(b"k" * 32).decode()
    named = AzureNamedKeyCredential("registryReadWrite", key)
    with pytest.raises(NotFoundError):
        IotHubRegistry(server.host, named, scheme="http", retry_total=0).get_device("nobody")


def test_sas_token_is_signed_with_the_policy_key() -> None:
    key = base64.b64encode(b"secret-key-bytes").decode()
    token = make_sas_token("MyHub.azure-devices.net", "service", key, ttl=60)
    assert token.startswith("SharedAccessSignature ")
    fields = dict(urllib.parse.parse_qsl(token.split(" ", 1)[1]))
    assert fields["sr"] == "myhub.azure-devices.net"
    assert fields["skn"] == "service"
    signed = f"{urllib.parse.quote(fields['sr'], safe='')}\n{fields['se']}".encode()
    expected = base64.b64encode(hmac.new(b"secret-key-bytes", signed, hashlib.sha256).digest())
    assert fields["sig"] == expected.decode()
    with pytest.raises(ValueError, match="base64"):
        make_sas_token("h", "p", "not base64!")


def test_plain_http_only_to_loopback_and_credential_checked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DpsEnrollmentStore("http://dps.example.net", Token())
    with pytest.raises(ValueError, match="host"):
        IotHubRegistry("hub.example.net/path", Token())
    with pytest.raises(TypeError, match="credential"):
        DpsEnrollmentStore("https://dps.example.net", "a-string")
    assert DpsEnrollmentStore("https://dps.example.net/", Token()).endpoint == (
        "https://dps.example.net"
    )


def test_connection_failure_is_a_service_error_without_status(server: RunningServer) -> None:
    store = DpsEnrollmentStore(server.url, Token(), retry_total=0)
    server.close()
    with pytest.raises(ServiceError) as caught:
        store.get_individual("dev-1")
    assert caught.value.status is None


def test_bad_input_is_refused_before_any_request(server: RunningServer) -> None:
    store = DpsEnrollmentStore(server.url, Token(), retry_total=0)
    with pytest.raises(InvalidRequestError):
        store.get_individual("")
    with pytest.raises(InvalidRequestError):
        store.query_individual(page_size=0)
    unknown = IndividualEnrollment("dev-1", primary=CertificateSlot(thumbprint_sha256="ab" * 32))
    with pytest.raises(InvalidRequestError, match="slot_unknown"):
        store.put_individual(unknown)
    with pytest.raises(NotFoundError):  # nothing was written
        store.get_individual("dev-1")


# --------------------------------------------------------------------------- error mapping


def hub_message(code: int, name: str) -> dict[str, str]:
    inner = {"errorCode": code, "trackingId": "t", "message": name, "info": {}}
    return {"Message": json.dumps(inner), "ExceptionMessage": ""}


@pytest.mark.parametrize(
    ("response", "method_call", "error"),
    [
        (StubResponse(404, hub_message(404103, "offline")), True, DeviceOfflineError),
        (StubResponse(404, hub_message(404103, "offline")), False, NotFoundError),
        (StubResponse(504, hub_message(504101, "timeout")), True, DeviceOfflineError),
        (StubResponse(404, {"Message": "ErrorCode:DeviceNotFound;x"}), True, NotFoundError),
        (StubResponse(409, {"Message": "ErrorCode:DeviceAlreadyExists;x"}), False, ConflictError),
        (StubResponse(412, {"Message": "ErrorCode:PreconditionFailed;x"}), False, ConcurrencyError),
        (StubResponse(400, hub_message(429001, "throttled")), False, ThrottledError),
        (StubResponse(500, None), False, ServiceError),
    ],
)
def test_hub_errors_map_to_typed_errors(
    response: StubResponse, method_call: bool, error: type[Exception]
) -> None:
    with pytest.raises(error):
        raise_for_hub(response, "op", method_call=method_call)  # type: ignore[arg-type]


def test_throttling_reads_retry_after_headers() -> None:
    body = {"Message": "ErrorCode:ThrottlingException;slow down"}
    for headers, expected in [
        ({"Retry-After": "7"}, 7.0),
        ({"x-ms-retry-after-ms": "2500", "Retry-After": "3"}, 2.5),
        ({}, 10.0),
    ]:
        with pytest.raises(ThrottledError) as caught:
            raise_for_hub(StubResponse(429, body, headers), "op")  # type: ignore[arg-type]
        assert caught.value.retry_after == expected
    with pytest.raises(ThrottledError) as dps_caught:
        raise_for_dps(StubResponse(503, None, {"Retry-After": "4"}), "op")  # type: ignore[arg-type]
    assert dps_caught.value.retry_after == 4.0


def test_dps_errors_keep_status_and_message() -> None:
    body = {"errorCode": 400004, "message": "bad enrollment"}
    with pytest.raises(ServiceError) as caught:
        raise_for_dps(StubResponse(400, body), "put enrollment x")  # type: ignore[arg-type]
    assert caught.value.status == 400
    assert "400004" in str(caught.value)
    assert "bad enrollment" in str(caught.value)
    raise_for_dps(StubResponse(204), "delete")  # type: ignore[arg-type]


def test_if_match_wildcard_is_sent_quoted() -> None:
    from shared.adapters._azure_rest import quote_etag

    assert quote_etag("*") == '"*"'
    assert quote_etag("abc") == '"abc"'
    assert quote_etag('"abc"') == '"abc"'


def test_device_body_keeps_the_operators_fields_and_changes_only_certrolls() -> None:
    from shared.adapters.iothub import IotHubRegistry, device_from
    from shared.domain.model import DeviceStatus

    read = {
        "deviceId": "d",
        "generationId": "637",
        "etag": "AAAA",
        "connectionState": "Connected",
        "status": "enabled",
        "authentication": {
            "type": "sas",
            "symmetricKey": {"primaryKey": "k1", "secondaryKey": "k2"},
        },
        "capabilities": {"iotEdge": True},
        "deviceScope": "ms-azure-iot-edge://gw-1",
        "parentScopes": ["ms-azure-iot-edge://gw-1"],
        "cloudToDeviceMessageCount": 3,
    }
    identity = device_from({**read, "authentication": {"type": "selfSigned"}})
    identity.document = read
    identity.primary_thumbprint = "a" * 64
    identity.status = DeviceStatus.DISABLED
    body = IotHubRegistry._device_body(identity)
    assert body == {
        "deviceId": "d",
        "etag": "AAAA",
        "status": "disabled",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "a" * 64}},
        "capabilities": {"iotEdge": True},
        "deviceScope": "ms-azure-iot-edge://gw-1",
        "parentScopes": ["ms-azure-iot-edge://gw-1"],
    }
    assert read["authentication"]["type"] == "sas"  # the document read is not changed


def test_enrollment_body_drops_only_read_only_fields() -> None:
    from shared.adapters.dps import kept_document

    read = {
        "registrationId": "r",
        "initialTwin": {"tags": {"a": 1}},
        "registrationState": {"status": "assigned"},
        "createdDateTimeUtc": "2026-01-01T00:00:00Z",
        "lastUpdatedDateTimeUtc": "2026-01-01T00:00:00Z",
        "iotHubs": ["h"],
    }
    assert kept_document(read) == {
        "registrationId": "r",
        "initialTwin": {"tags": {"a": 1}},
        "iotHubs": ["h"],
    }
    assert "registrationState" in read
