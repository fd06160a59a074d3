"""Microsoft's azure-iot-hub ``IoTHubRegistryManager`` against the emulator over TLS.

Each call is checked against what Microsoft documents for it: the IoT Hub service REST
API (Devices - Create Or Update Identity / Get Identity / Delete Identity / Get Devices,
Twin - Get / Update, Query - Get Twins, Devices - Invoke Method), ETags quoted
(``"*"`` included), 409 on a create of an existing device, 412 on a stale ETag, 404 for
a missing device, 404103 (DeviceNotOnline) for a method call to an offline device, and
query paging through the continuation token. The SDK sends api-version 2021-04-12.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import (
    CloudToDeviceMethod,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from msrest.exceptions import HttpOperationError

from tests.emulator.conformance.conftest import TlsFleet

PRIMARY = "a" * 64
SECONDARY = "b" * 64


@pytest.fixture
def registry(tls_fleet: TlsFleet) -> Iterator[IoTHubRegistryManager]:
    manager = IoTHubRegistryManager.from_connection_string(tls_fleet.hub_connection_string)
    manager.protocol.config.connection.verify = str(tls_fleet.ca_file)
    yield manager
    manager.amqp_svc_client.disconnect_sync()


def status_of(exc: HttpOperationError) -> int:
    return int(exc.response.status_code)


def test_the_sdk_speaks_2021_04_12(registry: IoTHubRegistryManager) -> None:
    assert registry.protocol.api_version == "2021-04-12"
    registry.create_device_with_x509("dev-1", PRIMARY, SECONDARY, "enabled")


def test_device_identity_lifecycle(registry: IoTHubRegistryManager) -> None:
    created = registry.create_device_with_x509("dev-1", PRIMARY, SECONDARY, "enabled")
    assert created.device_id == "dev-1"
    assert created.authentication.type == "selfSigned"
    assert created.authentication.x509_thumbprint.primary_thumbprint == PRIMARY
    assert created.etag

    with pytest.raises(HttpOperationError) as exists:  # a create of an existing device
        registry.create_device_with_x509("dev-1", PRIMARY, SECONDARY, "enabled")
    assert status_of(exists.value) == 409
    assert "DeviceAlreadyExists" in exists.value.response.text

    read = registry.get_device("dev-1")
    assert (read.device_id, read.etag, read.status) == ("dev-1", created.etag, "enabled")

    with pytest.raises(HttpOperationError) as stale:
        registry.update_device_with_x509("dev-1", '"stale"', PRIMARY, SECONDARY, "disabled")
    assert status_of(stale.value) == 412

    updated = registry.update_device_with_x509("dev-1", read.etag, SECONDARY, PRIMARY, "disabled")
    assert updated.status == "disabled"
    assert updated.authentication.x509_thumbprint.primary_thumbprint == SECONDARY
    assert updated.etag != read.etag

    wildcard = registry.update_device_with_x509("dev-1", "*", PRIMARY, None, "enabled")
    assert wildcard.status == "enabled"  # the SDK quotes "*"; the hub takes it as any

    with pytest.raises(HttpOperationError) as stale_delete:
        registry.delete_device("dev-1", etag=read.etag)
    assert status_of(stale_delete.value) == 412
    registry.delete_device("dev-1")  # no etag: the SDK sends If-Match "*"
    with pytest.raises(HttpOperationError) as gone:
        registry.get_device("dev-1")
    assert status_of(gone.value) == 404
    assert "DeviceNotFound" in gone.value.response.text
    with pytest.raises(HttpOperationError) as gone_again:
        registry.delete_device("dev-1")
    assert status_of(gone_again.value) == 404


def test_get_devices_honours_top(registry: IoTHubRegistryManager) -> None:
    for i in range(3):
        registry.create_device_with_x509(f"dev-{i}", PRIMARY, None, "enabled")
    assert [d.device_id for d in registry.get_devices()] == ["dev-0", "dev-1", "dev-2"]
    assert [d.device_id for d in registry.get_devices(max_number_of_devices=2)] == [
        "dev-0",
        "dev-1",
    ]


def test_twin_read_and_update_with_etags(registry: IoTHubRegistryManager) -> None:
    registry.create_device_with_x509("dev-1", PRIMARY, None, "enabled")
    twin = registry.get_twin("dev-1")
    assert twin.device_id == "dev-1"
    assert twin.etag
    patch = Twin(properties=TwinProperties(desired={"interval": 30}))
    with pytest.raises(HttpOperationError) as stale:
        registry.update_twin("dev-1", patch, etag='"stale"')
    assert status_of(stale.value) == 412
    updated = registry.update_twin("dev-1", patch, etag=twin.etag)
    assert updated.properties.desired["interval"] == 30
    assert updated.etag != twin.etag
    anyway = registry.update_twin("dev-1", Twin(tags={"site": "plant-7"}))  # If-Match "*"
    assert anyway.tags == {"site": "plant-7"}


def test_query_pages_with_continuation(registry: IoTHubRegistryManager) -> None:
    for i in range(3):
        registry.create_device_with_x509(f"dev-{i}", PRIMARY, None, "enabled")
    spec = QuerySpecification(query="SELECT * FROM devices")
    first = registry.query_iot_hub(spec, max_item_count=2)
    assert [t.device_id for t in first.items] == ["dev-0", "dev-1"]
    assert first.continuation_token
    rest = registry.query_iot_hub(spec, continuation_token=first.continuation_token)
    assert [t.device_id for t in rest.items] == ["dev-2"]
    assert not rest.continuation_token


def test_method_to_an_offline_device_is_404103(registry: IoTHubRegistryManager) -> None:
    registry.create_device_with_x509("dev-1", PRIMARY, None, "enabled")
    method = CloudToDeviceMethod(method_name="ping", payload={}, response_timeout_in_seconds=5)
    with pytest.raises(HttpOperationError) as offline:
        registry.invoke_device_method("dev-1", method)
    assert status_of(offline.value) == 404
    assert "404103" in offline.value.response.text
    with pytest.raises(HttpOperationError) as missing:
        registry.invoke_device_method("nobody", method)
    assert status_of(missing.value) == 404
