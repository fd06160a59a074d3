"""Client construction from settings and the azure-core -> certroll error mapping."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared.adapters import storage_clients
from shared.adapters.blob import BlobCrlPublisher
from shared.adapters.queues import StorageWorkQueue
from shared.adapters.storage_clients import (
    blob_service,
    queue_service,
    raise_storage_error,
    service_uri,
    storage_credential,
    table_service,
)
from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore
from shared.bootstrap import StorageBundle, storage_from_settings
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.settings import AZURITE_CONNECTION_STRING, Settings

IDENTITY_ENV = {
    "CERTROLL_STORAGE__tableServiceUri": "https://acct.table.core.windows.net/",
    "CERTROLL_STORAGE__blobServiceUri": "https://acct.blob.core.windows.net",
    "CERTROLL_STORAGE__queueServiceUri": "https://acct.queue.core.windows.net",
    "CERTROLL_STORAGE__credential": "managedidentity",
    "CERTROLL_STORAGE__clientId": "00000000-0000-0000-0000-000000000001",
}


def test_connection_string_default_targets_azurite(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({})
    with caplog.at_level(logging.INFO, logger="shared.adapters.storage_clients"):
        tables = table_service(settings)
        blobs = blob_service(settings)
        queues = queue_service(settings)
    assert tables.url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    assert blobs.url.startswith("http://127.0.0.1:10000/devstoreaccount1")
    assert queues.url.startswith("http://127.0.0.1:10001/devstoreaccount1")
    assert len(caplog.records) == 3
    account_key = AZURITE_CONNECTION_STRING.split("AccountKey=")[1].split(";")[0]
    assert all(account_key not in r.getMessage() for r in caplog.records)
    assert all("AccountKey" not in r.getMessage() for r in caplog.records)


def test_identity_form_wins_and_uses_managed_identity() -> None:
    settings = Settings.from_env(IDENTITY_ENV)
    tables = table_service(settings)
    blobs = blob_service(settings)
    queues = queue_service(settings)
    assert tables.url.startswith("https://acct.table.core.windows.net")
    assert blobs.url.startswith("https://acct.blob.core.windows.net")
    assert queues.url.startswith("https://acct.queue.core.windows.net")
    assert isinstance(storage_credential(settings), ManagedIdentityCredential)


def test_identity_form_without_credential_setting_uses_default_credential() -> None:
    settings = Settings.from_env({"CERTROLL_STORAGE__accountName": "acct2"})
    assert service_uri(settings, "table") == "https://acct2.table.core.windows.net"
    assert service_uri(settings, "queue") == "https://acct2.queue.core.windows.net"
    assert isinstance(storage_credential(settings), DefaultAzureCredential)


def test_identity_form_per_service_falls_back_to_connection_string() -> None:
    settings = Settings.from_env({"CERTROLL_STORAGE__blobServiceUri": "https://b.example"})
    assert service_uri(settings, "blob") == "https://b.example"
    assert service_uri(settings, "table") is None
    assert table_service(settings).url.startswith("http://127.0.0.1:10002/")


def test_unknown_credential_kind_is_a_clear_error() -> None:
    settings = Settings.from_env({**IDENTITY_ENV, "CERTROLL_STORAGE__credential": "secret"})
    with pytest.raises(ServiceError, match="managedidentity"):
        storage_credential(settings)


def test_storage_from_settings_builds_every_adapter() -> None:
    settings = Settings.from_env(
        {
            "CERTROLL_TABLE_PREFIX": "fleetA",
            "CERTROLL_WORK_QUEUE": "work-a",
            "CERTROLL_PKI_CONTAINER": "pki-a",
        }
    )
    adapters = storage_from_settings(settings)
    assert isinstance(adapters, StorageBundle)
    assert isinstance(adapters.ledger, TableLedger)
    assert adapters.ledger.table_name == "fleetALedger"
    assert adapters.ledger.index_table_name == "fleetALedgerIndex"
    assert isinstance(adapters.state, TableRotationStore)
    assert adapters.state.table_name == "fleetAState"
    assert isinstance(adapters.audit, TableAuditLog)
    assert adapters.audit.table_name == "fleetAAudit"
    assert isinstance(adapters.queue, StorageWorkQueue)
    assert adapters.queue.queue_name == "work-a"
    assert adapters.queue.poison_queue_name == "work-a-poison"
    assert isinstance(adapters.crl_publisher, BlobCrlPublisher)
    assert (
        adapters.crl_publisher.url_for("crl/issuing.crl")
        == "http://127.0.0.1:10000/devstoreaccount1/pki-a/crl/issuing.crl"
    )


@pytest.mark.parametrize("prefix", ["fleet-a", "9fleet", "fleet_a", "a" * 53])
def test_a_table_prefix_that_cannot_name_the_tables_is_refused(prefix: str) -> None:
    settings = Settings.from_env({"CERTROLL_TABLE_PREFIX": prefix})
    with pytest.raises(InvalidRequestError) as info:
        storage_from_settings(settings)
    assert info.value.code == "table_prefix_invalid"
    longest = Settings.from_env({"CERTROLL_TABLE_PREFIX": "a" * 52})
    assert storage_clients.table_names(longest)[1] == "a" * 52 + "LedgerIndex"


def test_storage_from_settings_uses_public_base_url() -> None:
    settings = Settings.from_env({"CERTROLL_CRL_BASE_URL": "https://pki.example.com/certroll/"})
    publisher = storage_from_settings(settings).crl_publisher
    assert (
        publisher.url_for("crl/issuing.crl") == "https://pki.example.com/certroll/crl/issuing.crl"
    )


def test_storage_from_settings_shares_one_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = storage_clients.storage_credential

    def counting(settings: Settings) -> Any:
        cred = real(settings)
        made.append(cred)
        return cred

    monkeypatch.setattr(storage_clients, "storage_credential", counting)
    storage_from_settings(Settings.from_env(IDENTITY_ENV))
    assert len(made) == 1


# --------------------------------------------------------------------------- errors


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}
        self.reason = "reason"
        self.request = None

    def text(self) -> str:
        return ""


def http_error(status: int, headers: dict[str, str] | None = None) -> HttpResponseError:
    return HttpResponseError(message=f"HTTP {status}", response=FakeResponse(status, headers))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ResourceNotFoundError("gone"), NotFoundError),
        (ResourceExistsError("there"), ConflictError),
        (ResourceModifiedError("changed"), ConcurrencyError),
        (http_error(412), ConcurrencyError),
        (http_error(500), ServiceError),
        (http_error(403), ServiceError),
        (ServiceRequestError("connection refused"), ServiceError),
    ],
)
def test_error_mapping(exc: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        raise_storage_error(exc, "thing")  # type: ignore[arg-type]
    assert info.value.__cause__ is exc
    assert str(info.value).startswith("thing: ")


def test_error_mapping_keeps_status() -> None:
    with pytest.raises(ServiceError) as info:
        raise_storage_error(http_error(500), "thing")
    assert info.value.status == 500


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"x-ms-retry-after-ms": "1500"}, 1.5),
        (429, {}, 1.0),
        (503, {"Retry-After": "soon"}, 1.0),
    ],
)
def test_throttling_maps_retry_after(
    status: int, headers: dict[str, str], retry_after: float
) -> None:
    with pytest.raises(ThrottledError) as info:
        raise_storage_error(http_error(status, headers), "thing")
    assert info.value.retry_after == retry_after
