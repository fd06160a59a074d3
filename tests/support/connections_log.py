"""Connections resource-log records as Microsoft documents them, for tests.

``DOCUMENTED_SAMPLE`` is the "Connections category" sample of MicrosoftDocs/azure-docs
``articles/iot-hub/monitor-iot-hub-reference.md`` (commit 02f3eb17893dec324b47820624941d0bc21b43e6),
copied field for field. An error record is that sample with ``level`` ``Error`` and the
``resultType`` (error code) and ``resultDescription`` (error message) that
``articles/iot-hub/iot-hub-troubleshoot-connectivity.md`` says connectivity errors carry
(e.g. ``401003`` ``IoTHubUnauthorized``). Nothing else: no record carries the certificate
the device presented, because no Microsoft page documents one.
"""

from __future__ import annotations

import copy
import json
from typing import Any

DOCUMENTED_SAMPLE: dict[str, Any] = {
    "records": [
        {
            "time": " UTC timestamp",
            "resourceId": "Resource Id",
            "operationName": "deviceConnect",
            "category": "Connections",
            "level": "Information",
            "properties": '{"deviceId":"<deviceId>","sdkVersion":"<sdkVersion>","protocol":'
            '"<protocol>","authType":"{\\"scope\\":\\"device\\",\\"type\\":\\"sas\\",\\"issuer'
            '\\":\\"iothub\\",\\"acceptingIpFilterRule\\":null}","maskedIpAddress":'
            '"<maskedIpAddress>"}',
            "location": "Resource location",
        }
    ]
}

#: the record fields and ``properties`` keys Microsoft documents for this category
RECORD_FIELDS = frozenset(
    {"time", "resourceId", "operationName", "category", "level", "resultType",
     "resultDescription", "properties", "location"}
)
PROPERTY_KEYS = frozenset({"deviceId", "sdkVersion", "protocol", "authType", "maskedIpAddress"})


def connect_error(
    device_id: str,
    result_type: str = "401003",
    description: str = "IoTHubUnauthorized",
    *,
    time: str = "2026-02-03T04:05:06.1234567Z",
    protocol: str = "Mqtt",
) -> dict[str, Any]:
    """One documented Connections record of a failed ``deviceConnect`` of ``device_id``."""
    record = copy.deepcopy(DOCUMENTED_SAMPLE["records"][0])
    props = json.loads(record["properties"])
    props.update(deviceId=device_id, protocol=protocol, sdkVersion="2020-09-30",
                 maskedIpAddress="10.0.0.XXX")
    record.update(
        time=time,
        resourceId="/SUBSCRIPTIONS/X/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/H",
        level="Error",
        resultType=result_type,
        resultDescription=description,
        properties=json.dumps(props, separators=(",", ":")),
        location="westeurope",
    )
    return record


def envelope(*records: Any) -> bytes:
    """An Event Hub body as a diagnostic setting writes it: ``{"records": [...]}``."""
    return json.dumps({"records": list(records)}).encode()
