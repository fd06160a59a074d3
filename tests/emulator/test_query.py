from __future__ import annotations

from typing import Any

import pytest

from local.emulator import FleetEmulator
from shared.domain.errors import InvalidRequestError
from shared.domain.model import DeviceIdentity, DeviceStatus


def _fleet(emu: FleetEmulator) -> None:
    rows: list[tuple[str, str | None, dict[str, Any] | None]] = [
        ("d0", "a" * 64, {"x509": {"notAfter": "2026-03-10T00:00:00Z", "thumbprint": "t0"}}),
        ("d1", "b" * 64, {"x509": {"notAfter": "2026-04-10T00:00:00Z", "thumbprint": "t1"}}),
        ("d2", "c" * 64, {"x509": {"notAfter": "2026-05-10T00:00:00Z"}, "n": 5, "ok": True}),
        ("d3", "d" * 64, {"n": "5"}),
        ("d4", "e" * 64, None),
    ]
    assert emu.bulk_load(rows) == 5
    ident = emu.hub.get_device("d4")
    ident.status = DeviceStatus.DISABLED
    emu.hub.update_device(ident)


def _ids(emu: FleetEmulator, query: str) -> list[str]:
    return [t.device_id for t in emu.hub.query_twins(query).items]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT * FROM devices", ["d0", "d1", "d2", "d3", "d4"]),
        (
            "select * from devices where properties.reported.x509.notAfter < "
            "'2026-04-15T00:00:00Z'",
            ["d0", "d1"],
        ),
        (
            "SELECT * FROM devices WHERE properties.reported.x509.notAfter >= "
            "'2026-04-10T00:00:00Z'",
            ["d1", "d2"],
        ),
        ("SELECT * FROM devices WHERE deviceId = 'd3'", ["d3"]),
        ("SELECT * FROM devices WHERE deviceId IN ['d3', 'd0', 'zz']", ["d0", "d3"]),
        ("SELECT * FROM devices WHERE status = 'disabled'", ["d4"]),
        ("SELECT * FROM devices WHERE status != 'disabled'", ["d0", "d1", "d2", "d3"]),
        ("SELECT * FROM devices WHERE properties.reported.n = 5", ["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.n = '5'", ["d3"]),
        ("SELECT * FROM devices WHERE properties.reported.n > 4", ["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.ok = true", ["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.n != 4", ["d2"]),  # "5" is no number
        ("SELECT * FROM devices WHERE IS_DEFINED(properties.reported.x509)", ["d0", "d1", "d2"]),
        (
            "SELECT * FROM devices WHERE NOT IS_DEFINED(properties.reported.x509.thumbprint)",
            ["d2", "d3", "d4"],
        ),
        (
            "SELECT * FROM devices WHERE properties.reported.x509.thumbprint = 't0' "
            "OR deviceId = 'd3' AND status = 'enabled'",
            ["d0", "d3"],
        ),
        (
            "SELECT * FROM devices WHERE (deviceId = 'd0' OR deviceId = 'd1') "
            "AND properties.reported.x509.thumbprint = 't1'",
            ["d1"],
        ),
        ('SELECT * FROM devices WHERE deviceId = "d2"', ["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.missing.deep.path = 1", []),
    ],
)
def test_query_subset(emu: FleetEmulator, query: str, expected: list[str]) -> None:
    _fleet(emu)
    assert _ids(emu, query) == expected


@pytest.mark.parametrize(
    "query",
    [
        "SELECT deviceId FROM devices",
        "SELECT * FROM devices.modules",
        "SELECT * FROM devices WHERE",
        "SELECT * FROM devices WHERE deviceId = ",
        "SELECT * FROM devices WHERE deviceId == 'x'",
        "SELECT * FROM devices WHERE properties.reported.ok < true",
        "SELECT * FROM devices WHERE foo.bar = 1",
        "SELECT * FROM devices WHERE deviceId = 'x' extra",
        "DELETE FROM devices",
    ],
)
def test_bad_queries_are_invalid_requests(emu: FleetEmulator, query: str) -> None:
    with pytest.raises(InvalidRequestError):
        emu.hub.query_twins(query)


def test_query_returns_full_twins(emu: FleetEmulator) -> None:
    _fleet(emu)
    (twin,) = emu.hub.query_twins("SELECT * FROM devices WHERE deviceId = 'd0'").items
    assert twin.reported == {"x509": {"notAfter": "2026-03-10T00:00:00Z", "thumbprint": "t0"}}
    assert twin.status is DeviceStatus.ENABLED
    assert twin.etag == emu.hub.get_twin("d0").etag
    twin.reported["x509"]["thumbprint"] = "changed"
    assert emu.hub.get_twin("d0").reported["x509"]["thumbprint"] == "t0"


def test_paging_streams_from_the_continuation(emu: FleetEmulator) -> None:
    emu.bulk_load((f"dev-{i:04d}", None, {"i": i}) for i in range(2500))
    query = "SELECT * FROM devices WHERE properties.reported.i >= 100"
    seen: list[int] = []
    cont: str | None = None
    pages = 0
    while True:
        page = emu.hub.query_twins(query, page_size=1000, continuation=cont)
        pages += 1
        assert len(page.items) <= 1000
        seen += [t.reported["i"] for t in page.items]
        cont = page.continuation
        if cont is None:
            break
        if pages == 1:  # devices added while paging appear in later pages
            emu.hub.create_device(DeviceIdentity("late", primary_thumbprint="f" * 64))
    assert seen == list(range(100, 2500))
    assert pages == 3
    with pytest.raises(InvalidRequestError):
        emu.hub.query_twins(query, continuation="not-a-token")
    other = emu.hub.query_twins("SELECT * FROM devices", page_size=10).continuation
    assert other is not None
    with pytest.raises(InvalidRequestError):
        emu.hub.query_twins(query, continuation=other)  # token of another query
    with pytest.raises(InvalidRequestError):
        emu.hub.query_twins(query, page_size=0)


def test_deleted_devices_leave_the_results(emu: FleetEmulator) -> None:
    _fleet(emu)
    emu.hub.delete_device("d1")
    assert _ids(emu, "SELECT * FROM devices") == ["d0", "d2", "d3", "d4"]
    assert emu.hub.count("SELECT * FROM devices WHERE IS_DEFINED(properties.reported.n)") == 2
