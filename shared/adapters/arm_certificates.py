"""DPS and IoT Hub CA certificates through Azure Resource Manager (the CA roll's verify).

Both services keep CA certificates as ARM child resources with the same operations
(Microsoft's generated resource types: ``Microsoft.Devices/provisioningServices/
certificates`` @2022-12-12 and ``Microsoft.Devices/IotHubs/certificates`` @2023-06-30;
REST "Certificates - Create Or Update / Generate Verification Code / Verify / Delete",
each write with ``If-Match``):

- ``PUT {resource}/certificates/{name}`` ``{"properties": {"certificate": <PEM>}}``
- ``POST .../generateVerificationCode`` → ``properties.verificationCode``
- ``POST .../verify`` ``{"certificate": <verification certificate PEM>}`` →
  ``properties.isVerified``

The caller needs ARM write rights on the hub and DPS (e.g. the operator running
``certroll ca roll verify`` with ``az login``): the Function App's identity holds only
data-plane roles, by design (docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

from shared.adapters._azure_rest import (
    ServiceClient,
    json_body,
    path_id,
    quote_etag,
    raise_status_error,
)
from shared.domain.ca_roll import CaCertificateInfo
from shared.domain.errors import InvalidRequestError

ARM = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
API_VERSIONS = {
    "microsoft.devices/provisioningservices": "2022-12-12",
    "microsoft.devices/iothubs": "2023-06-30",
}


def _api_version(resource_id: str) -> str:
    parts = [p for p in resource_id.lower().split("/") if p]
    try:
        at = parts.index("providers")
        kind = f"{parts[at + 1]}/{parts[at + 2]}"
    except (ValueError, IndexError):
        kind = ""
    version = API_VERSIONS.get(kind)
    if version is None:
        raise InvalidRequestError(
            "resource_id_invalid",
            f"{resource_id!r} is not the ARM id of an IoT Hub or a Device Provisioning Service",
        )
    return version


class ArmCaCertificates:
    """The CA certificates of one hub or DPS (``resource_id``: its ARM id)."""

    def __init__(
        self, resource_id: str, credential: Any, *, endpoint: str = ARM, transport: Any = None
    ) -> None:
        self.resource_id = "/" + resource_id.strip("/")
        self.api_version = _api_version(self.resource_id)
        self._client = ServiceClient(endpoint, credential, ARM_SCOPE, transport=transport)

    def _path(self, name: str, action: str = "") -> str:
        return f"{self.resource_id}/certificates/{path_id(name)}" + (f"/{action}" if action else "")

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        etag: str | None = None,
        body: Any = None,
    ) -> Any:
        headers = {"If-Match": quote_etag(etag)} if etag else None
        response = self._client.send(
            method, path, params={"api-version": self.api_version}, headers=headers, json=body
        )
        if not 200 <= response.status_code < 300:
            raise_status_error(response, f"{what}: {response.status_code} {response.text()[:300]}")
        return json_body(response)

    @staticmethod
    def _info(name: str, doc: Any) -> CaCertificateInfo:
        props = (doc or {}).get("properties") or {}
        thumb = str(props.get("thumbprint") or "").lower()
        return CaCertificateInfo(
            name=name,
            thumbprint_sha256=thumb,
            subject=str(props.get("subject") or ""),
            verified=bool(props.get("isVerified")),
            etag=str((doc or {}).get("etag") or ""),
            verification_code=props.get("verificationCode"),
        )

    def get(self, name: str) -> CaCertificateInfo:
        return self._info(name, self._send("GET", self._path(name), f"certificate {name}"))

    def upload(self, name: str, certificate_pem: str, etag: str | None = None) -> CaCertificateInfo:
        body = {"properties": {"certificate": certificate_pem}}
        doc = self._send("PUT", self._path(name), f"upload {name}", etag=etag, body=body)
        return self._info(name, doc)

    def generate_verification_code(self, name: str, etag: str) -> CaCertificateInfo:
        doc = self._send(
            "POST", self._path(name, "generateVerificationCode"), f"code {name}", etag=etag
        )
        return self._info(name, doc)

    def verify(self, name: str, etag: str, verification_pem: str) -> CaCertificateInfo:
        doc = self._send(
            "POST",
            self._path(name, "verify"),
            f"verify {name}",
            etag=etag,
            body={"certificate": verification_pem},
        )
        return self._info(name, doc)

    def delete(self, name: str, etag: str) -> None:
        self._send("DELETE", self._path(name), f"delete {name}", etag=etag)
