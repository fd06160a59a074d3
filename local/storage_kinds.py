"""What a storage request of the local stack is, for the benchmark's per-kind counts
(``bench/e2e.py``, ``docs/performance.md``): which table and which operation."""

from __future__ import annotations

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
_OPERATIONS = {
    "POST": "insert",
    "PUT": "replace",
    "PATCH": "merge",
    "MERGE": "merge",
    "DELETE": "delete",
}


def _service(host: str) -> str:
    """``table``, ``queue``, ``blob`` or ``""`` from ``host[:port]``: Azurite's ports
    (10002, 10001, 10000) or an account's ``<account>.<service>.core.windows.net``."""
    if host.endswith(":10002") or ".table." in host:
        return "table"
    if host.endswith(":10001") or ".queue." in host:
        return "queue"
    if host.endswith(":10000") or ".blob." in host:
        return "blob"
    return ""


def storage_call_kind(method: str, url: str) -> str:
    """What a storage request is, for the benchmark's per-kind counts: ``<table>_<op>``
    for Table storage (``ledger_query``, ``state_point_read``, ``audit_insert``, ...),
    else ``queue``, ``blob`` or ``other``. Plain string work: it runs on every request
    the benchmark measures."""
    rest = url.split("://", 1)[-1]
    host, _, path_and_query = rest.partition("/")
    service = _service(host)
    if service != "table":
        return service or "other"
    path, _, query = path_and_query.partition("?")
    segment = path.rsplit("/", 1)[-1]
    name, paren, _ = segment.partition("(")
    role = next((r for suffix, r in _TABLE_ROLES if name.endswith(suffix)), "other")
    if name == "Tables":
        role = "tables"
    if method.upper() == "GET":
        keyed = paren and not segment.endswith("()")
        op = "point_read" if keyed and "filter=" not in query else "query"
    else:
        op = _OPERATIONS.get(method.upper(), method.lower())
    return f"{role}_{op}"
