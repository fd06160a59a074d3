"""What a storage request of the local stack is, for the benchmark's per-kind counts
(``bench/e2e.py``, ``docs/performance.md``): which table and which operation."""

from __future__ import annotations

import re
import urllib.parse

#: the tables of one run, by the suffix ``shared.adapters.storage_clients.table_names``
#: and the CA roll's store put after the prefix (the longest suffix first)
_TABLE_ROLES = (
    ("LedgerIndex", "ledger_index"),
    ("Ledger", "ledger"),
    ("State", "state"),
    ("Audit", "audit"),
    ("Campaigns", "campaigns"),
    ("CaRoll", "ca_roll"),
)
_TABLE_PATH = re.compile(r"/(?P<table>[A-Za-z][A-Za-z0-9]*)(?P<key>\([^)]*\))?$")


def storage_call_kind(method: str, url: str) -> str:
    """What a storage request is, for the benchmark's per-kind counts: ``<table>_<op>``
    for Table storage (``ledger_query``, ``state_point_read``, ``audit_insert``, ...),
    else ``queue``, ``blob`` or ``other``. Azurite's URLs put the account name first."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    match = _TABLE_PATH.search(path)
    if parts.port == 10002 or (parts.hostname or "").split(".")[1:2] == ["table"]:
        if match is None:
            return "table_other"
        name = match["table"]
        role = next((r for suffix, r in _TABLE_ROLES if name.endswith(suffix)), "other")
        if name == "Tables":
            role = "tables"
        query = "$filter" in urllib.parse.unquote(parts.query)
        op = {
            "GET": "query" if query or not match["key"] else "point_read",
            "POST": "insert",
            "PUT": "replace",
            "PATCH": "merge",
            "MERGE": "merge",
            "DELETE": "delete",
        }.get(method.upper(), method.lower())
        return f"{role}_{op}"
    if parts.port == 10001 or (parts.hostname or "").split(".")[1:2] == ["queue"]:
        return "queue"
    if parts.port == 10000 or (parts.hostname or "").split(".")[1:2] == ["blob"]:
        return "blob"
    return "other"
