"""The REST front end refuses what the services' specs forbid, with the services' answers."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.test import Client, TestResponse

from local.emulator import FleetEmulator
from local.emulator.http import FleetHttpApp, serve
from shared.clock import ManualClock

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DPS = {"api-version": "2021-10-01"}
HUB = {"api-version": "2020-03-13"}
AUTH = {"Authorization": "Bearer test-token"}
_KEY = ec.generate_private_key(ec.SECP256R1())


def cert_pem(cn: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + timedelta(days=30))
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def enrollment(rid: str, **extra: Any) -> dict[str, Any]:
    body = {
        "registrationId": rid,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": cert_pem(rid)}}},
        },
    }
    body.update(extra)
    return body


@pytest.fixture
def emulator() -> FleetEmulator:
    return FleetEmulator(ManualClock(T0), enforce_limits=False)


@pytest.fixture
def client(emulator: FleetEmulator) -> Client:
    return Client(FleetHttpApp(emulator))


def call(
    client: Client,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    all_headers = dict(AUTH)
    all_headers.update(headers or {})
    kwargs: dict[str, Any] = {"query_string": query if query is not None else DPS}
    if body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["content_type"] = "application/json"
    return client.open(path, method=method, headers=all_headers, **kwargs)


def dps_error(response: TestResponse) -> int:
    body = response.get_json()
    assert set(body) >= {"errorCode", "message", "trackingId", "timestampUtc"}
    assert response.headers["x-ms-error-code"] == str(body["errorCode"])
    code: int = body["errorCode"]
    return code


def hub_error(response: TestResponse) -> str:
    body = response.get_json()
    assert set(body) == {"Message", "ExceptionMessage"}
    return response.headers["iothub-errorcode"]


# --------------------------------------------------------------------------- DPS


def test_put_and_get_enrollment_with_full_certificate_info(client: Client) -> None:
    created = call(client, "PUT", "/enrollments/dev-1", body=enrollment("dev-1"))
    assert created.status_code == 200
    etag = created.get_json()["etag"]
    assert created.headers["ETag"].strip('"') == etag.strip('"')
    got = call(client, "GET", "/enrollments/dev-1")
    primary = got.get_json()["attestation"]["x509"]["clientCertificates"]["primary"]
    assert "certificate" not in primary  # DPS never returns the certificate itself
    info = primary["info"]
    assert info["subjectName"] == "CN=dev-1"
    assert len(info["sha256Thumbprint"]) == 64
    assert info["sha256Thumbprint"].isupper()
    assert len(info["sha1Thumbprint"]) == 40
    assert info["version"] == 3
    assert info["notAfterUtc"] == "2026-03-31T00:00:00Z"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(
            {"registrationId": 5, "attestation": {"type": "x509"}},
            "registrationId",
            id="wrong-type",
        ),
        pytest.param({"registrationId": "dev-1"}, "'attestation' is a required", id="missing"),
        pytest.param(
            {"registrationId": "dev-1", "attestation": {"type": "fingerprint"}},
            "attestation/type",
            id="enum",
        ),
        pytest.param(
            enrollment("dev-1", provisioningState="enabled"),
            "provisioningState",
            id="unknown-property",
        ),
        pytest.param(
            enrollment("dev-1", reprovisionPolicy={"updateHubAssignment": True}),
            "migrateDeviceData",
            id="nested-required",
        ),
        pytest.param(
            enrollment("dev-1", createdDateTimeUtc="yesterday"), "date-time", id="bad-date-time"
        ),
    ],
)
def test_invalid_enrollment_bodies_get_400_and_change_nothing(
    client: Client, emulator: FleetEmulator, body: dict[str, Any], fragment: str
) -> None:
    response = call(client, "PUT", "/enrollments/dev-1", body=body)
    assert response.status_code == 400
    assert dps_error(response) == 400004
    assert fragment in response.get_json()["message"]
    assert emulator.dps.query_individual().items == []


def test_api_version_is_required_and_must_match(client: Client) -> None:
    missing = call(client, "GET", "/enrollments/dev-1", query={})
    assert missing.status_code == 400
    assert "api-version" in missing.get_json()["message"]
    wrong = call(client, "GET", "/enrollments/dev-1", query={"api-version": "2020-03-13"})
    assert wrong.status_code == 400
    assert "2021-10-01" in wrong.get_json()["message"]
    hub_wrong = call(client, "GET", "/devices/dev-1", query=DPS)
    assert hub_wrong.status_code == 400
    assert hub_error(hub_wrong) == "InvalidProtocolVersion"


def test_a_request_without_authorization_is_refused(client: Client) -> None:
    response = client.get("/enrollments/dev-1", query_string=DPS)
    assert response.status_code == 401
    assert dps_error(response) == 401002
    response = client.get("/devices/dev-1", query_string=HUB, headers={"Authorization": "Basic x"})
    assert response.status_code == 401
    assert hub_error(response) == "IotHubUnauthorizedAccess"


def test_update_without_if_match_conflicts_and_stale_if_match_fails(client: Client) -> None:
    first = call(client, "PUT", "/enrollments/dev-1", body=enrollment("dev-1"))
    etag = first.headers["ETag"]
    again = call(client, "PUT", "/enrollments/dev-1", body=enrollment("dev-1"))
    assert again.status_code == 409  # the service wants If-Match to replace
    stale = call(
        client, "PUT", "/enrollments/dev-1", body=enrollment("dev-1"), headers={"If-Match": '"x"'}
    )
    assert stale.status_code == 412
    ok = call(
        client, "PUT", "/enrollments/dev-1", body=enrollment("dev-1"), headers={"If-Match": etag}
    )
    assert ok.status_code == 200
    assert ok.headers["ETag"] != etag
    gone = call(client, "DELETE", "/enrollments/dev-1", headers={"If-Match": etag})
    assert gone.status_code == 412
    deleted = call(client, "DELETE", "/enrollments/dev-1", headers={"If-Match": ok.headers["ETag"]})
    assert deleted.status_code == 204
    assert call(client, "GET", "/enrollments/dev-1").status_code == 404


def test_body_must_be_json_with_the_right_media_type(client: Client) -> None:
    response = client.put(
        "/enrollments/dev-1",
        query_string=DPS,
        headers=AUTH,
        data=json.dumps(enrollment("dev-1")),
        content_type="text/plain",
    )
    assert response.status_code == 415
    response = client.put(
        "/enrollments/dev-1",
        query_string=DPS,
        headers=AUTH,
        data="{",
        content_type="application/json",
    )
    assert response.status_code == 400
    missing = client.put("/enrollments/dev-1", query_string=DPS, headers=AUTH)
    assert missing.status_code == 400


def test_path_and_body_ids_must_agree(client: Client) -> None:
    response = call(client, "PUT", "/enrollments/dev-1", body=enrollment("dev-2"))
    assert response.status_code == 400
    assert "dev-2" in response.get_json()["message"]


def test_query_page_size_header_must_be_an_integer(client: Client) -> None:
    response = call(
        client,
        "POST",
        "/enrollments/query",
        body={"query": "*"},
        headers={"x-ms-max-item-count": "many"},
    )
    assert response.status_code == 400
    assert "x-ms-max-item-count" in response.get_json()["message"]


def test_unknown_paths_and_operations_not_served(client: Client) -> None:
    assert call(client, "GET", "/nothing/here").status_code == 404
    unserved = call(client, "GET", "/statistics/devices", query=HUB)
    assert unserved.status_code == 501
    assert hub_error(unserved) == "NotImplemented"
    assert call(client, "PATCH", "/enrollments/dev-1").status_code == 405


# --------------------------------------------------------------------------- hub


def device_body(did: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "deviceId": did,
        "status": "enabled",
        "authentication": {
            "type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": "ab" * 32},
        },
    }
    body.update(extra)
    return body


def test_hub_device_put_semantics(client: Client) -> None:
    created = call(client, "PUT", "/devices/dev-1", query=HUB, body=device_body("dev-1"))
    assert created.status_code == 200
    dup = call(client, "PUT", "/devices/dev-1", query=HUB, body=device_body("dev-1"))
    assert dup.status_code == 409
    assert hub_error(dup) == "DeviceAlreadyExists"
    assert dup.get_json()["Message"].startswith("ErrorCode:DeviceAlreadyExists;")
    stale = call(
        client,
        "PUT",
        "/devices/dev-1",
        query=HUB,
        body=device_body("dev-1"),
        headers={"If-Match": '"stale"'},
    )
    assert stale.status_code == 412
    assert hub_error(stale) == "PreconditionFailed"
    ok = call(
        client,
        "PUT",
        "/devices/dev-1",
        query=HUB,
        body=device_body("dev-1", status="disabled"),
        headers={"If-Match": created.headers["ETag"]},
    )
    assert ok.status_code == 200
    assert ok.get_json()["status"] == "disabled"
    bad = call(client, "PUT", "/devices/dev-2", query=HUB, body=device_body("dev-2", status="off"))
    assert bad.status_code == 400
    assert hub_error(bad) == "ArgumentInvalid"
    sas = call(
        client,
        "PUT",
        "/devices/dev-2",
        query=HUB,
        body=device_body("dev-2", authentication={"type": "sas"}),
    )
    assert sas.status_code == 400
    missing = call(client, "GET", "/devices/dev-9", query=HUB)
    assert missing.status_code == 404
    assert hub_error(missing) == "DeviceNotFound"


def test_twin_patch_validation(client: Client, emulator: FleetEmulator) -> None:
    emulator.bulk_load([("dev-t", "ab" * 32, {"a": 1})])
    wrong = call(client, "PATCH", "/twins/dev-t", query=HUB, body={"properties": {"desired": 5}})
    assert wrong.status_code == 400
    reported = call(
        client, "PATCH", "/twins/dev-t", query=HUB, body={"properties": {"reported": {"a": 2}}}
    )
    assert reported.status_code == 400
    ok = call(
        client, "PATCH", "/twins/dev-t", query=HUB, body={"properties": {"desired": {"b": 1}}}
    )
    assert ok.status_code == 200
    assert ok.get_json()["properties"]["desired"] == {"b": 1, "$version": 2}
    assert emulator.hub.get_twin("dev-t").desired == {"b": 1}


def test_method_to_offline_device_is_404103(client: Client, emulator: FleetEmulator) -> None:
    emulator.bulk_load([("dev-m", "ab" * 32, None)])
    body = {"methodName": "reprovision", "payload": {}, "responseTimeoutInSeconds": 5}
    response = call(client, "POST", "/twins/dev-m/methods", query=HUB, body=body)
    assert response.status_code == 404
    assert hub_error(response) == "DeviceNotOnline"
    inner = json.loads(response.get_json()["Message"])
    assert inner["errorCode"] == 404103
    typed = call(
        client,
        "POST",
        "/twins/dev-m/methods",
        query=HUB,
        body={"methodName": "x", "responseTimeoutInSeconds": "5"},
    )
    assert typed.status_code == 400
    nameless = call(client, "POST", "/twins/dev-m/methods", query=HUB, body={"payload": {}})
    assert nameless.status_code == 400


def test_job_request_validation(client: Client, emulator: FleetEmulator) -> None:
    body = {
        "jobId": "job-1",
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reprovision", "payload": {}},
        "queryCondition": "deviceId IN ['a']",
        "startTime": "2026-03-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 60,
    }
    bad_time = call(client, "PUT", "/jobs/v2/job-1", query=HUB, body={**body, "startTime": "soon"})
    assert bad_time.status_code == 400
    twin_job = call(
        client, "PUT", "/jobs/v2/job-1", query=HUB, body={**body, "type": "scheduleUpdateTwin"}
    )
    assert twin_job.status_code == 400
    ok = call(client, "PUT", "/jobs/v2/job-1", query=HUB, body=body)
    assert ok.status_code == 200
    assert ok.get_json()["jobId"] == "job-1"
    assert call(client, "GET", "/jobs/v2/job-2", query=HUB).status_code == 404


def test_throttled_requests_get_429_with_retry_after() -> None:
    emulator = FleetEmulator(
        ManualClock(T0), limits_override={"hub.identity_operations": 0.05}
    )  # three a minute
    client = Client(FleetHttpApp(emulator))
    emulator.bulk_load([("dev-1", "ab" * 32, None)])
    statuses = [call(client, "GET", "/devices/dev-1", query=HUB) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    throttled = statuses[-1]
    assert hub_error(throttled) == "ThrottlingException"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 21
    assert 0 < int(throttled.headers["x-ms-retry-after-ms"]) <= 21000


# --------------------------------------------------------------------------- socket


def test_serve_listens_on_loopback_and_closes(emulator: FleetEmulator) -> None:
    import urllib.error
    import urllib.request

    server = serve(emulator)
    host, port = server.host.split(":")
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert server.url == f"http://{server.host}"
    request = urllib.request.Request(f"{server.url}/enrollments/x?api-version=2021-10-01")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401
    caught.value.close()
    server.close()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", int(port)), timeout=1),
    ):
        pass


def test_hub_if_match_wildcard_is_the_quoted_star(client: Client) -> None:
    """ETags are quoted, the wildcard too; the hub ignores an unquoted ``*``
    (azure-iot-sdk-python PR #754, azure-iot-sdk-node PR #606)."""
    assert (
        call(client, "PUT", "/devices/dev-1", query=HUB, body=device_body("dev-1")).status_code
        == 200
    )
    bare = call(
        client,
        "PUT",
        "/devices/dev-1",
        query=HUB,
        body=device_body("dev-1"),
        headers={"If-Match": "*"},
    )
    assert bare.status_code == 409  # taken as no If-Match: a create of an existing device
    quoted = call(
        client,
        "PUT",
        "/devices/dev-1",
        query=HUB,
        body=device_body("dev-1", status="disabled"),
        headers={"If-Match": '"*"'},
    )
    assert quoted.status_code == 200
    assert quoted.get_json()["status"] == "disabled"


@pytest.mark.parametrize("version", ["2020-03-13", "2021-04-12"])
def test_hub_accepts_the_api_versions_microsofts_sdks_send(client: Client, version: str) -> None:
    created = call(
        client, "PUT", "/devices/dev-1", query={"api-version": version}, body=device_body("dev-1")
    )
    assert created.status_code == 200, created.get_data(as_text=True)
    old = call(client, "GET", "/devices/dev-1", query={"api-version": "2019-10-01"})
    assert old.status_code == 400


def test_parent_scopes_need_2021_04_12(client: Client) -> None:
    body = device_body("dev-1", parentScopes=["ms-azure-iot-edge://gw-1-1"])
    refused = call(client, "PUT", "/devices/dev-1", query=HUB, body=body)
    assert refused.status_code == 400  # not in the 2020-03-13 Device definition
    taken = call(client, "PUT", "/devices/dev-1", query={"api-version": "2021-04-12"}, body=body)
    assert taken.status_code == 200
    assert taken.get_json()["parentScopes"] == ["ms-azure-iot-edge://gw-1-1"]
