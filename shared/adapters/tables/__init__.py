"""Azure Table storage adapters: the issuance ledger, the rotation state and the audit log.

Key design (see docs/storage.md for the reasoning):

Ledger table (``<prefix>Ledger``): certificate rows only
    ``PK=<device>, RK=cert-<csr sha256>``   the certificate record (authoritative copy);
                                            one certificate per device and CSR

Ledger index table (``<prefix>LedgerIndex``): look-ups, never scanned per rotation
    ``PK=~serial-<last 2 hex>, RK=<serial>`` serial -> device + CSR (``get``, ``set_status``)
    ``PK=~thumb-<first 2 hex>, RK=<tp>``     thumbprint -> device + serial + CSR
    ``PK=~revoked, RK=<serial>``            full copy of every revoked record (the CRL list)

State table (``<prefix>State``): ``PK=RK=<device>``, ETag-checked writes.

Audit table (``<prefix>Audit``): one entity per entry, ``PK=<device>`` (``PK=~global``
for entries without a device); ``RK=<inverted append time>-<uuid>`` so a partition reads
newest first.

Partition and row keys are the identifier percent-encoded (so ``?``, ``/``, ``#``, ``%``
and ``~`` never reach a key raw); ``~`` starts every index partition and can therefore
never be a device's partition.

Modules: ``_common`` (key encoding, datetimes, ``_TableBase``), ``ledger``
(:class:`TableLedger`), ``state`` (:class:`TableRotationStore`), ``audit``
(:class:`TableAuditLog`).
"""

from __future__ import annotations

from shared.adapters.tables._common import MAX_STRING_CHARS
from shared.adapters.tables.audit import MAX_DETAIL_PARTS, TableAuditLog
from shared.adapters.tables.ledger import TableLedger
from shared.adapters.tables.state import TableRotationStore

__all__ = [
    "MAX_DETAIL_PARTS",
    "MAX_STRING_CHARS",
    "TableAuditLog",
    "TableLedger",
    "TableRotationStore",
]
