"""Storage requests by kind, counted by the local stack's transport against Azurite: the
figures ``bench e2e`` reports per rotation, and the requests the issuer's key rule
costs (docs/performance.md)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from local.stack import STORAGE_CALLS, loopback_transport
from local.storage_kinds import storage_call_kind
from shared.adapters.tables import TableLedger
from shared.domain.model import CertificateStatus
from tests.contract.test_storage_ports import _certificate_pem, make_record
from tests.support.azurite import unique_name

TABLES = "http://127.0.0.1:10002/devstoreaccount1/"


@pytest.mark.parametrize(
    ("method", "url", "kind"),
    [
        ("GET", TABLES + "cr1State(PartitionKey='d',RowKey='d')", "state_point_read"),
        ("PUT", TABLES + "cr1State(PartitionKey='d',RowKey='d')", "state_replace"),
        ("GET", TABLES + "cr1Ledger()?$filter=PartitionKey%20eq%20'd'", "ledger_query"),
        ("PATCH", TABLES + "cr1Ledger(PartitionKey='d',RowKey='c')", "ledger_merge"),
        ("GET", TABLES + "cr1LedgerIndex(PartitionKey='~revkey-ab',RowKey='ab')",
         "ledger_index_point_read"),
        ("GET", TABLES + "cr1LedgerIndex()?%24filter=PartitionKey%20eq%20%27~revoked%27",
         "ledger_index_query"),
        ("POST", TABLES + "cr1Audit", "audit_insert"),
        ("GET", TABLES + "cr1Campaigns()?$filter=state%20eq%20'running'", "campaigns_query"),
        ("DELETE", TABLES + "Tables('cr1State')", "tables_delete"),
        ("GET", "http://127.0.0.1:10001/devstoreaccount1/certroll-rotation/messages", "queue"),
        ("PUT", "http://127.0.0.1:10000/devstoreaccount1/pki/crl/issuing.crl", "blob"),
        ("GET", "https://acct.table.core.windows.net/cr1Audit()?$filter=x", "audit_query"),
        ("GET", "http://127.0.0.1:7071/api/devices", "other"),
    ],
)
def test_storage_call_kind(method: str, url: str, kind: str) -> None:
    assert storage_call_kind(method, url) == kind


@pytest.fixture
def counted_ledger(azurite: str) -> Iterator[TableLedger]:
    service = TableServiceClient.from_connection_string(azurite, transport=loopback_transport())
    name = unique_name("t") + "Ledger"  # named as a run's: <prefix>Ledger, <prefix>LedgerIndex
    yield TableLedger(service, name)
    service.delete_table(name)
    service.delete_table(f"{name}Index")


def _requests(call: Callable[[], Any]) -> Counter[str]:
    before = STORAGE_CALLS.snapshot()
    call()
    return STORAGE_CALLS.snapshot() - before


@pytest.mark.azurite
def test_the_key_rule_costs_one_point_read_and_one_partition_query(
    counted_ledger: TableLedger,
) -> None:
    """What the issuer asks the ledger at every issuance: the device's certificates (one
    range query over the device's partition) and the revoked-key row (one point read,
    whatever the number of revoked certificates)."""
    ledger = counted_ledger
    pem, key = _certificate_pem("dev-1")
    for i in range(3):
        other, _ = _certificate_pem(f"dev-{i}")
        ledger.add(dataclasses.replace(
            make_record(device_id=f"dev-{i}", serial=f"a{i}", csr=f"{i}" * 64), pem=other
        ))
        ledger.set_status(f"a{i}", CertificateStatus.REVOKED)
    ledger.add(dataclasses.replace(make_record(device_id="dev-9", serial="b9"), pem=pem))
    ledger.revoked_with_key("0" * 64)  # the worker's first look-up checks the marker
    assert _requests(lambda: ledger.revoked_with_key(key)) == {"ledger_index_point_read": 1}
    assert ledger.revoked_with_key(key) is None
    ledger.set_status("b9", CertificateStatus.REVOKED)
    assert _requests(lambda: ledger.revoked_with_key(key)) == {"ledger_index_point_read": 1}
    assert ledger.revoked_with_key(key) == "b9"
    assert _requests(lambda: ledger.list_for_device("dev-9")) == {"ledger_query": 1}
