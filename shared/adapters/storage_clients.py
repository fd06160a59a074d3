"""Azure Storage client construction and error mapping for the storage adapters.

A leaf: it builds service clients and names tables, it never builds an adapter (that is
:mod:`shared.bootstrap`'s job), so the adapters can import its error mapping freely.

The ``CERTROLL_STORAGE`` setting follows the Azure Functions connection conventions:

- locally it is a connection string (default: Azurite's published development account);
- in Azure it is identity-based: ``CERTROLL_STORAGE__tableServiceUri``,
  ``CERTROLL_STORAGE__blobServiceUri`` and ``CERTROLL_STORAGE__queueServiceUri`` (or
  ``CERTROLL_STORAGE__accountName`` for all three), with the optional
  ``CERTROLL_STORAGE__credential=managedidentity`` and ``CERTROLL_STORAGE__clientId``.

The identity form wins when a service URI for the service in question is present.
Connection strings hold account keys, so nothing here ever logs one: log lines name the
endpoint and the credential kind only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import NoReturn, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters.retry_after import retry_after_seconds
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.settings import Settings

logger = logging.getLogger(__name__)

STORAGE_SETTING = "CERTROLL_STORAGE"

_SERVICE_URI_SUFFIX = {
    "table": "tableServiceUri",
    "blob": "blobServiceUri",
    "queue": "queueServiceUri",
}

T = TypeVar("T")


# --------------------------------------------------------------------------- settings


def _identity_value(settings: Settings, suffix: str) -> str:
    return settings.values.get(f"{STORAGE_SETTING}__{suffix}", "").strip()


def service_uri(settings: Settings, service: str) -> str | None:
    """The identity-based endpoint of ``service`` ("table" | "blob" | "queue"), if configured.

    ``__<service>ServiceUri`` wins; otherwise ``__accountName`` gives the public-cloud
    endpoint; for blob, the Functions shorthand ``__serviceUri`` is accepted too.
    """
    if service not in _SERVICE_URI_SUFFIX:
        raise ValueError(f"unknown storage service {service!r}")
    uri = _identity_value(settings, _SERVICE_URI_SUFFIX[service])
    if not uri and service == "blob":
        uri = _identity_value(settings, "serviceUri")
    if not uri:
        account = _identity_value(settings, "accountName")
        if account:
            uri = f"https://{account}.{service}.core.windows.net"
    return uri.rstrip("/") or None


def _connection_string(settings: Settings) -> str:
    value = settings.get(STORAGE_SETTING).strip()
    if not value:
        raise ServiceError(
            f"{STORAGE_SETTING} is empty and no {STORAGE_SETTING}__<service>ServiceUri is set"
        )
    return value


def storage_credential(settings: Settings) -> TokenCredential:
    """The token credential for identity-based storage access.

    ``__credential=managedidentity`` selects ``ManagedIdentityCredential`` (with
    ``__clientId`` for a user-assigned identity); otherwise ``DefaultAzureCredential``,
    which also picks up a developer's ``az login``.
    """
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    kind = _identity_value(settings, "credential").lower()
    client_id = _identity_value(settings, "clientId") or None
    if kind == "managedidentity":
        return ManagedIdentityCredential(client_id=client_id)
    if kind:
        raise ServiceError(
            f"{STORAGE_SETTING}__credential={kind!r} is not supported (use 'managedidentity')"
        )
    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()


def _build(
    settings: Settings,
    service: str,
    from_uri: Callable[[str, TokenCredential], T],
    from_connection_string: Callable[[str], T],
    credential: TokenCredential | None,
) -> T:
    uri = service_uri(settings, service)
    if uri:
        logger.info("%s storage: identity-based endpoint %s", service, uri)
        return from_uri(uri, credential or storage_credential(settings))
    client = from_connection_string(_connection_string(settings))
    logger.info("%s storage: connection string endpoint %s", service, getattr(client, "url", "?"))
    return client


def table_service(
    settings: Settings, credential: TokenCredential | None = None
) -> TableServiceClient:
    return _build(
        settings,
        "table",
        lambda uri, cred: TableServiceClient(endpoint=uri, credential=cred),
        TableServiceClient.from_connection_string,
        credential,
    )


def blob_service(
    settings: Settings, credential: TokenCredential | None = None
) -> BlobServiceClient:
    return _build(
        settings,
        "blob",
        lambda uri, cred: BlobServiceClient(account_url=uri, credential=cred),
        BlobServiceClient.from_connection_string,
        credential,
    )


def queue_service(
    settings: Settings, credential: TokenCredential | None = None
) -> QueueServiceClient:
    return _build(
        settings,
        "queue",
        lambda uri, cred: QueueServiceClient(account_url=uri, credential=cred),
        QueueServiceClient.from_connection_string,
        credential,
    )


# --------------------------------------------------------------------------- names


#: Azure Table storage: letters and digits, a letter first, 3 to 63 characters
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")


def table_names(settings: Settings) -> tuple[str, str, str, str, str]:
    """(ledger, ledger index, state, audit, campaigns) table names from
    ``CERTROLL_TABLE_PREFIX``; InvalidRequestError ``table_prefix_invalid`` when the
    prefix cannot make them."""
    prefix = settings.get("CERTROLL_TABLE_PREFIX")
    names = (
        f"{prefix}Ledger",
        f"{prefix}LedgerIndex",
        f"{prefix}State",
        f"{prefix}Audit",
        f"{prefix}Campaigns",
    )
    if not all(_TABLE_NAME.fullmatch(name) for name in names):
        raise InvalidRequestError(
            "table_prefix_invalid",
            f"CERTROLL_TABLE_PREFIX {prefix!r} must be letters and digits, a letter first, "
            "at most 52 characters",
        )
    return names


def service_clients(
    settings: Settings,
) -> tuple[TableServiceClient, BlobServiceClient, QueueServiceClient]:
    """The table, blob and queue service clients of ``settings`` (one credential shared by
    the identity-based ones)."""
    credential: TokenCredential | None = None
    if any(service_uri(settings, s) for s in _SERVICE_URI_SUFFIX):
        credential = storage_credential(settings)
    return (
        table_service(settings, credential),
        blob_service(settings, credential),
        queue_service(settings, credential),
    )


# --------------------------------------------------------------------------- errors


#: seconds a throttled storage call waits when the response names no Retry-After
STORAGE_RETRY_AFTER_SECONDS = 1.0


def raise_storage_error(exc: AzureError, what: str) -> NoReturn:
    """Translate an azure-core exception into certroll's typed errors (and raise it).

    ResourceNotFound -> NotFoundError; ResourceExists -> ConflictError; ResourceModified
    or 412 -> ConcurrencyError; 429/503 -> ThrottledError (retry_after from the response
    headers); everything else -> ServiceError with the status code when there is one.
    """
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) if response is not None else None
    code = getattr(exc, "error_code", None)
    code_text = f" ({getattr(code, 'value', code)})" if code else ""
    if isinstance(exc, ResourceNotFoundError):
        raise NotFoundError(f"{what}: not found{code_text}") from exc
    if isinstance(exc, ResourceModifiedError) or status == 412:
        raise ConcurrencyError(f"{what}: changed by someone else{code_text}") from exc
    if isinstance(exc, ResourceExistsError):
        raise ConflictError(f"{what}: already exists{code_text}") from exc
    if status in (429, 503):
        raise ThrottledError(
            f"{what}: storage is throttling (HTTP {status}){code_text}",
            retry_after=retry_after_seconds(headers, STORAGE_RETRY_AFTER_SECONDS),
        ) from exc
    if isinstance(exc, ClientAuthenticationError):
        raise ServiceError(f"{what}: storage refused the credentials{code_text}", status) from exc
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        raise ServiceError(f"{what}: storage is unreachable: {exc.message}", status) from exc
    if isinstance(exc, HttpResponseError):
        raise ServiceError(f"{what}: storage answered HTTP {status}{code_text}", status) from exc
    raise ServiceError(f"{what}: {exc.message}", status) from exc
