"""Microsoft's azure-iot-deviceprovisioning ``DeviceProvisioningClient`` against the
emulator over TLS.

Checked against the DPS service REST API 2021-10-01 (the SDK's default api-version):
enrollment CreateOrUpdate / Get / Delete with ETags (409 on a create of an existing
enrollment, 412 on a stale If-Match), Query with paging, Get Attestation Mechanism, Run
Bulk Operation (at most 10 enrollments; modes create, update, updateIfMatchETag, delete;
per-enrollment errors with ``isSuccessful`` false), enrollment groups, and the
registration-state Get / Query / Delete.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.emulator.conformance.conftest import SAS_KEY, START, TlsFleet

_KEY = ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, key = (issuer[0].subject, issuer[1]) if issuer else (name, _KEY)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(START + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def enrollment(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "registrationId": rid,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": pem(make_cert(rid))}}},
        },
        **extra,
    }


@pytest.fixture
def client(tls_fleet: TlsFleet) -> Iterator[DeviceProvisioningClient]:
    credential = AzureNamedKeyCredential("provisioningserviceowner", SAS_KEY)
    with DeviceProvisioningClient(
        tls_fleet.server.url, credential, connection_verify=str(tls_fleet.ca_file)
    ) as dps:
        yield dps


def test_enrollment_crud_with_etags(client: DeviceProvisioningClient) -> None:
    created = client.enrollment.create_or_update(id="dev-1", enrollment=enrollment("dev-1"))
    assert created["registrationId"] == "dev-1"
    info = created["attestation"]["x509"]["clientCertificates"]["primary"]["info"]
    assert len(info["sha256Thumbprint"]) == 64
    assert created["etag"]

    with pytest.raises(ResourceExistsError):  # a PUT without If-Match is a create: 409
        client.enrollment.create_or_update(id="dev-1", enrollment=enrollment("dev-1"))
    with pytest.raises(HttpResponseError) as stale:
        client.enrollment.create_or_update(
            id="dev-1", enrollment=enrollment("dev-1"), if_match='"stale"'
        )
    assert stale.value.status_code == 412
    body = {**enrollment("dev-1"), "initialTwin": {"tags": {"site": "plant-7"}}}
    replaced = client.enrollment.create_or_update(
        id="dev-1", enrollment=body, if_match=created["etag"]
    )
    assert replaced["initialTwin"] == {"tags": {"site": "plant-7"}}
    assert client.enrollment.get(id="dev-1")["etag"] == replaced["etag"]

    with pytest.raises(HttpResponseError) as stale_delete:
        client.enrollment.delete(id="dev-1", if_match=created["etag"])
    assert stale_delete.value.status_code == 412
    client.enrollment.delete(id="dev-1", if_match=replaced["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id="dev-1")


def test_attestation_mechanism_read(client: DeviceProvisioningClient) -> None:
    client.enrollment.create_or_update(id="dev-1", enrollment=enrollment("dev-1"))
    mechanism = client.enrollment.get_attestation_mechanism(id="dev-1")
    assert mechanism["type"] == "x509"
    assert "info" in mechanism["x509"]["clientCertificates"]["primary"]
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get_attestation_mechanism(id="nobody")


def test_query_pages(client: DeviceProvisioningClient) -> None:
    for i in range(5):
        client.enrollment.create_or_update(id=f"dev-{i}", enrollment=enrollment(f"dev-{i}"))
    pages = list(client.enrollment.query(query_specification={"query": "*"}, top=2).by_page())
    ids = [[e["registrationId"] for e in page] for page in pages]
    assert ids == [["dev-0", "dev-1"], ["dev-2", "dev-3"], ["dev-4"]]


def test_bulk_operation_modes(client: DeviceProvisioningClient) -> None:
    created = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "create", "enrollments": [enrollment("a"), enrollment("b")]}
    )
    assert created == {"isSuccessful": True}
    again = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "create", "enrollments": [enrollment("a"), enrollment("c")]}
    )
    assert again["isSuccessful"] is False
    assert [(e["registrationId"], e["errorCode"] // 1000) for e in again["errors"]] == [("a", 409)]
    assert client.enrollment.get(id="c")["registrationId"] == "c"  # the others went through

    updated = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "update",
            "enrollments": [enrollment("a", provisioningStatus="disabled"), enrollment("d")],
        }
    )
    assert updated == {"isSuccessful": True}  # replaces a, creates d
    assert client.enrollment.get(id="a")["provisioningStatus"] == "disabled"

    current = client.enrollment.get(id="b")["etag"]
    conditional = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "updateIfMatchETag",
            "enrollments": [
                enrollment("b", etag=current, provisioningStatus="disabled"),
                enrollment("c", etag="stale"),
            ],
        }
    )
    assert conditional["isSuccessful"] is False
    assert [(e["registrationId"], e["errorCode"] // 1000) for e in conditional["errors"]] == [
        ("c", 412)
    ]
    assert client.enrollment.get(id="b")["provisioningStatus"] == "disabled"

    deleted = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "delete", "enrollments": [enrollment("a"), enrollment("zz")]}
    )
    assert [(e["registrationId"], e["errorCode"] // 1000) for e in deleted["errors"]] == [
        ("zz", 404)
    ]
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id="a")


def test_bulk_operation_takes_at_most_ten(client: DeviceProvisioningClient) -> None:
    eleven = [enrollment(f"dev-{i}") for i in range(11)]
    with pytest.raises(HttpResponseError) as refused:
        client.enrollment.run_bulk_operation(
            bulk_operation={"mode": "create", "enrollments": eleven}
        )
    assert refused.value.status_code == 400
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id="dev-0")  # nothing was written
    ten = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "create", "enrollments": eleven[:10]}
    )
    assert ten == {"isSuccessful": True}


def test_groups_and_registration_states(
    client: DeviceProvisioningClient, tls_fleet: TlsFleet
) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-root")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-root")]))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(START + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    group = {
        "enrollmentGroupId": "fleet",
        "attestation": {
            "type": "x509",
            "x509": {"signingCertificates": {"primary": {"certificate": pem(root)}}},
        },
    }
    stored = client.enrollment_group.create_or_update(id="fleet", enrollment_group=group)
    assert stored["enrollmentGroupId"] == "fleet"
    mechanism = client.enrollment_group.get_attestation_mechanism(id="fleet")
    assert "info" in mechanism["x509"]["signingCertificates"]["primary"]

    for i in range(3):
        leaf = make_cert(f"member-{i}", (root, root_key))
        tls_fleet.emulator.register(f"member-{i}", [leaf, root])
    pages = list(client.device_registration_state.query(id="fleet", top=2).by_page())
    ids = [[r["registrationId"] for r in page] for page in pages]
    assert ids == [["member-0", "member-1"], ["member-2"]]
    state = client.device_registration_state.get(id="member-0")
    assert state["status"] == "assigned"
    with pytest.raises(HttpResponseError) as stale:
        client.device_registration_state.delete(id="member-0", if_match='"stale"')
    assert stale.value.status_code == 412
    client.device_registration_state.delete(id="member-0", if_match=state["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id="member-0")
    with pytest.raises(ResourceNotFoundError):
        list(client.device_registration_state.query(id="no-such-group"))
