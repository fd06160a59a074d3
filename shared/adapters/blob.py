"""Blob storage adapter for publishing the CRL and the CA certificates.

The container is created on first use with anonymous *blob* read access (what a CRL
distribution point needs: relying parties fetch the CRL without credentials). When the
account forbids public access (``allowBlobPublicAccess=false``) the container is created
private and a warning says that ``CERTROLL_CRL_BASE_URL`` must point at a public front
(CDN, separate public account) instead.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings, PublicAccess

from shared.adapters.storage_clients import raise_storage_error
from shared.ports import CrlPublisher

logger = logging.getLogger(__name__)

CRL_CONTENT_TYPE = "application/pkix-crl"
PEM_CONTENT_TYPE = "application/x-pem-file"
#: CRLs change on every revocation: caches may keep one for five minutes at most.
CRL_CACHE_CONTROL = "public, max-age=300"
#: CA certificates change rarely.
CERT_CACHE_CONTROL = "public, max-age=3600"


def _cache_control(name: str, content_type: str) -> str:
    if content_type == CRL_CONTENT_TYPE or name.endswith(".crl"):
        return CRL_CACHE_CONTROL
    return CERT_CACHE_CONTROL


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or name.endswith("/") or len(name) > 1024:
        raise ValueError(f"invalid blob name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid blob name {name!r}")
    return name


class BlobCrlPublisher(CrlPublisher):
    """Publishes CRLs and CA certificates as blobs of one container."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        public_base_url: str | None = None,
    ) -> None:
        self._service = service
        self.container = container
        self._container_client = service.get_container_client(container)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def container_url(self) -> str:
        return str(self._container_client.url).split("?", 1)[0].rstrip("/")

    def _container(self) -> ContainerClient:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._create_container()
                    self._ready = True
        return self._container_client

    def _create_container(self) -> None:
        client = self._container_client
        try:
            client.create_container(public_access=PublicAccess.BLOB)
            logger.info("created container %s with public blob read access", self.container)
            return
        except ResourceExistsError:
            return
        except HttpResponseError as exc:
            if exc.status_code != 409:
                raise_storage_error(exc, f"create container {self.container}")
            # 409 PublicAccessNotPermitted: the account forbids anonymous access.
        except AzureError as exc:
            raise_storage_error(exc, f"create container {self.container}")
        logger.warning(
            "storage account forbids public access; container %s is private: "
            "set CERTROLL_CRL_BASE_URL to the public location of the CRL",
            self.container,
        )
        try:
            client.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise_storage_error(exc, f"create container {self.container}")

    def publish(self, name: str, data: bytes, content_type: str) -> str:
        _check_name(name)
        if not isinstance(data, bytes | bytearray):
            raise TypeError("data must be bytes")
        settings = ContentSettings(
            content_type=content_type, cache_control=_cache_control(name, content_type)
        )
        try:
            self._container().upload_blob(
                name, bytes(data), overwrite=True, content_settings=settings
            )
        except AzureError as exc:
            raise_storage_error(exc, f"publish {name}")
        url = self.url_for(name)
        logger.info("published %s (%d bytes, %s) at %s", name, len(data), content_type, url)
        return url

    def url_for(self, name: str) -> str:
        _check_name(name)
        base = self.public_base_url or self.container_url
        return f"{base}/{quote(name, safe='/')}"

    def fetch(self, name: str) -> bytes:
        _check_name(name)
        try:
            return self._container().download_blob(name).readall()
        except AzureError as exc:
            raise_storage_error(exc, f"published object {name}")
