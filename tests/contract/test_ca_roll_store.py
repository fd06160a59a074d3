"""The CA-roll record's store, in memory and on Azurite: round trip, ETag-checked
writes, a new instance reads what an earlier one wrote."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.ca_roll_store import MemoryCaRollStore, TableCaRollStore
from shared.domain.ca_roll import (
    CaEntry,
    CaRollRecord,
    CaRollStore,
    CaStatus,
    RollMode,
    RollState,
)
from shared.domain.errors import ConcurrencyError, ConflictError
from tests.contract.conftest import IMPLEMENTATIONS

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


@pytest.fixture(params=IMPLEMENTATIONS)
def store_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], CaRollStore]]:
    if request.param == "memory":
        shared = MemoryCaRollStore()
        yield lambda: shared
        return
    service: TableServiceClient = request.getfixturevalue("tables")
    name: str = request.getfixturevalue("table_name")
    yield lambda: TableCaRollStore(service, name)


def record() -> CaRollRecord:
    entry = CaEntry(
        ca_id="issuing-2",
        generation=2,
        key_backend="pkcs11",
        key_ref="certroll-issuing-2-abc",
        key_id="pkcs11:certroll/certroll-issuing-2-abc",
        status=CaStatus.PENDING,
        crl_name="crl/issuing-2.crl",
        cert_name="ca/issuing-2.pem",
        service_name="certroll-issuing-2",
        csr_pem="-----BEGIN CERTIFICATE REQUEST-----\nx\n-----END CERTIFICATE REQUEST-----\n",
        created_at=T0,
    )
    return CaRollRecord(
        state=RollState.PREPARED,
        mode=RollMode.COMPROMISE,
        cas=[entry],
        old_ca_id="issuing-1",
        new_ca_id="issuing-2",
        campaign_ids=["c1"],
        updated_at=T0,
    )


def test_round_trip_and_etags(store_factory: Callable[[], CaRollStore]) -> None:
    store = store_factory()
    assert store.get() is None
    saved = store.put(record())
    assert saved.etag
    again = store_factory().get()
    assert again is not None
    assert again.etag == saved.etag
    assert again.state is RollState.PREPARED
    assert again.mode is RollMode.COMPROMISE
    assert again.cas[0].status is CaStatus.PENDING
    assert again.cas[0].created_at == T0
    assert again.to_dict() == record().to_dict()
    with pytest.raises(ConflictError):
        store.put(record())
    again.state = RollState.CERTIFIED
    newer = store.put(again)
    assert newer.etag != saved.etag
    with pytest.raises(ConcurrencyError):
        store.put(saved)  # written from a stale read
