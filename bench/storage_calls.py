"""CPU per Azure Table storage round trip against Azurite (the figures behind
docs/performance.md and the table layouts in docs/storage.md).

``storage_client_cpu_ms_<op>``: Python CPU of one call through the local stack's
transport (libcurl, ``local/curl_transport.py``): point read, create, ETag-checked
replace, a two-entity entity-group transaction.
``storage_client_cpu_ms_point_read_sdk_default``: a point read through azure-core's
default requests transport, and ``storage_client_cpu_ratio_curl_vs_sdk_default`` the
ratio of the two, the clients alternating in one process.

``azurite_cpu_ms_point_read_<shared|unique>_rowkey_<n>``: Azurite's CPU per point read
in a table of ``n`` rows whose RowKey every row shares (the old rotation-state layout)
or each row has to itself. ``azurite_cpu_ms_partition_query_<layout>_<n>``: per
one-partition range query (the finish's certificate listing, two certificates per
device) in a ledger of ``n`` devices: ``certs_only``, the ledger table as it is (its
look-up rows in a table of their own), or ``with_index_rows``, the table as it was
(two serial and two thumbprint rows per device beside the certificate rows). Azurite
must be running (``make azurite``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from bench.common import BenchRow
from local.stack import cpu_seconds, loopback_transport
from shared.settings import AZURITE_CONNECTION_STRING

CALLS = 400
SIZES = (1_000, 10_000)


def _python_ms(fn: Callable[[int], Any], n: int = CALLS) -> float:
    started = time.process_time()
    for i in range(n):
        fn(i)
    return 1000 * (time.process_time() - started) / n


def _azurite_ms(fn: Callable[[int], Any], n: int = CALLS) -> float:
    before = cpu_seconds()["azurite"]
    for i in range(n):
        fn(i)
    return 1000 * (cpu_seconds()["azurite"] - before) / n


def _fill(table: TableClient, rows: list[dict[str, Any]]) -> None:
    by_pk: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_pk.setdefault(row["PartitionKey"], []).append(row)
    for part in by_pk.values():
        for i in range(0, len(part), 100):
            table.submit_transaction([("create", r) for r in part[i : i + 100]])


def _client_rows(service: TableServiceClient) -> list[BenchRow]:
    table = service.create_table(f"benchcalls{uuid.uuid4().hex[:8]}")
    default = TableServiceClient.from_connection_string(
        AZURITE_CONNECTION_STRING, transport=RequestsTransport(use_env_settings=False)
    ).get_table_client(table.table_name)
    try:
        row = {"PartitionKey": "p", "RowKey": "r", "detail": "x" * 500}
        table.create_entity(row)
        etag = [table.get_entity("p", "r").metadata["etag"]]

        def replace(_i: int) -> None:
            meta = table.update_entity(
                row,
                mode=UpdateMode.REPLACE,
                etag=etag[0],
                match_condition=MatchConditions.IfNotModified,
            )
            etag[0] = meta["etag"]

        ops = {
            "point_read": lambda _i: table.get_entity("p", "r"),
            "create": lambda i: table.create_entity({**row, "RowKey": f"c{i}"}),
            "replace": replace,
            "transaction_2": lambda i: table.submit_transaction(
                [("create", {**row, "RowKey": f"t{i}{k}"}) for k in "ab"]
            ),
        }
        rows = [
            BenchRow(
                f"storage_client_cpu_ms_{name}",
                _python_ms(fn),
                "ms",
                f"Python CPU per call ({name.replace('_', ' ')}), curl transport",
            )
            for name, fn in ops.items()
        ]
        curl = sdk = 0.0
        for _ in range(10):  # alternating, so load changes hit both alike
            curl += _python_ms(lambda _i: table.get_entity("p", "r"), CALLS // 10)
            sdk += _python_ms(lambda _i: default.get_entity("p", "r"), CALLS // 10)
        rows += [
            BenchRow(
                "storage_client_cpu_ms_point_read_sdk_default",
                sdk / 10,
                "ms",
                "Python CPU per point read, azure-core's default requests transport",
            ),
            BenchRow(
                "storage_client_cpu_ratio_curl_vs_sdk_default",
                curl / sdk,
                "ratio",
                "point read CPU: curl transport / azure-core's default requests transport",
            ),
        ]
        return rows
    finally:
        service.delete_table(table.table_name)


def _point_read_rows(service: TableServiceClient, devices: int) -> list[BenchRow]:
    table = service.create_table(f"benchrows{uuid.uuid4().hex[:8]}")
    try:
        rows: list[dict[str, Any]] = []
        for d in range(devices):
            rows.append({"PartitionKey": f"s{d:05d}", "RowKey": "rotation", "x": "y" * 300})
            rows.append({"PartitionKey": f"u{d:05d}", "RowKey": f"u{d:05d}", "x": "y" * 300})
        _fill(table, rows)
        n = f"{devices // 1000}k"
        return [
            BenchRow(
                f"azurite_cpu_ms_point_read_shared_rowkey_{n}",
                _azurite_ms(lambda i: table.get_entity(f"s{i % devices:05d}", "rotation")),
                "ms",
                f"Azurite CPU per point read, {devices} rows sharing one RowKey",
            ),
            BenchRow(
                f"azurite_cpu_ms_point_read_unique_rowkey_{n}",
                _azurite_ms(
                    lambda i: table.get_entity(f"u{i % devices:05d}", f"u{i % devices:05d}")
                ),
                "ms",
                f"Azurite CPU per point read, {devices} rows with a RowKey each",
            ),
        ]
    finally:
        service.delete_table(table.table_name)


def _cert_row(d: int, c: str) -> dict[str, Any]:
    """A row shaped like a ledger certificate row (sixteen properties, a PEM)."""
    small = {f"p{k}": f"{d:05d}{c}{k}" * 4 for k in range(13)}
    return {"PartitionKey": f"d{d:05d}", "RowKey": f"cert-{c}", "pem": "x" * 1200, **small}


def _partition_query_rows(service: TableServiceClient, devices: int) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for layout in ("certs_only", "with_index_rows"):
        table = service.create_table(f"benchledger{uuid.uuid4().hex[:8]}")
        try:
            entities = [_cert_row(d, c) for d in range(devices) for c in "ab"]
            if layout == "with_index_rows":
                entities += [
                    {"PartitionKey": f"~{kind}-{d % 256:02x}", "RowKey": f"{c}{d}", "device": "x"}
                    for d in range(devices)
                    for c in "ab"
                    for kind in ("serial", "thumb")
                ]
            _fill(table, entities)

            def listing(i: int, table: TableClient = table) -> list[Any]:
                return list(
                    table.query_entities(
                        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                        parameters={"pk": f"d{i % devices:05d}", "lo": "cert-", "hi": "cert."},
                    )
                )

            rows.append(
                BenchRow(
                    f"azurite_cpu_ms_partition_query_{layout}_{devices // 1000}k",
                    _azurite_ms(listing),
                    "ms",
                    f"Azurite CPU per one-partition range query (2 rows), {devices} devices, "
                    f"table of {len(entities)} rows",
                )
            )
        finally:
            service.delete_table(table.table_name)
    return rows


def run() -> list[BenchRow]:
    service = TableServiceClient.from_connection_string(
        AZURITE_CONNECTION_STRING, transport=loopback_transport()
    )
    rows = _client_rows(service)
    for devices in SIZES:
        rows += _point_read_rows(service, devices)
        rows += _partition_query_rows(service, devices)
    return rows
