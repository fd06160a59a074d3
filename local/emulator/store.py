"""Compact in-memory records of the emulator and certificate helpers."""

from __future__ import annotations

import base64
import functools
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from shared.domain.certs import certificate_pem, sha1_thumbprint, sha256_thumbprint
from shared.domain.errors import InvalidRequestError
from shared.domain.model import CertificateSlot, DeviceStatus

if TYPE_CHECKING:
    from local.emulator.core import DeviceSession

_etag_counter = itertools.count(1)


def new_etag() -> str:
    """A fresh opaque ETag (never repeats within the process)."""
    return '"' + base64.b64encode(str(next(_etag_counter)).encode()).decode() + '"'


@functools.lru_cache(maxsize=4096)
def twin_etag(version: int) -> str:
    """IoT Hub style twin ETag: base64 of the 8-byte twin version."""
    return base64.b64encode(version.to_bytes(8, "big")).decode()


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def is_valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` directly signed ``cert`` (name and signature)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chains_to(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> x509.Certificate | None:
    """The anchor the presented ``chain`` (leaf first) leads to, or None.

    Walks leaf → chain[1] → ... checking each signature; at every step an anchor that
    directly issued the current certificate (or is that certificate) ends the walk.
    Every certificate on the path and the anchor must be valid at ``now``.
    """
    if not chain or not anchors:
        return None
    anchor_fps = {sha256_thumbprint(a): a for a in anchors}
    for i, cert in enumerate(chain):
        if not is_valid_at(cert, now):
            return None
        if i > 0:
            fp = sha256_thumbprint(cert)
            if fp in anchor_fps:
                return anchor_fps[fp]
        for anchor in anchors:
            if issued_by(cert, anchor):
                return anchor if is_valid_at(anchor, now) else None
        if i + 1 >= len(chain) or not issued_by(cert, chain[i + 1]):
            return None
    return None


def parse_pem(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError("certificate_invalid", f"{what}: not a PEM certificate") from exc


class StoredCert:
    """A certificate held in an enrollment slot, with its DPS ``info``."""

    __slots__ = ("cert", "not_after", "pem", "sha1", "sha256", "subject")

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        self.pem = certificate_pem(cert)
        self.sha1 = sha1_thumbprint(cert)
        self.sha256 = sha256_thumbprint(cert)
        self.subject = cert.subject.rfc4514_string()
        self.not_after = cert.not_valid_after_utc

    def info_slot(self) -> CertificateSlot:
        return CertificateSlot(
            thumbprint_sha256=self.sha256, not_after=self.not_after, subject=self.subject
        )

    def matches(self, thumbprint: str) -> bool:
        t = thumbprint.lower()
        return t in (self.sha256, self.sha1)


class DeviceRecord:
    """One hub device: identity and twin, kept small (slots, lazily created dicts)."""

    __slots__ = (
        "auth_type",
        "conn_seq",
        "connection_state",
        "desired",
        "desired_version",
        "device_id",
        "document",
        "etag",
        "generation",
        "index",
        "primary_tp",
        "reported",
        "reported_flat",
        "reported_version",
        "secondary_tp",
        "session",
        "status",
        "status_reason",
        "tags",
        "version",
    )

    def __init__(self, device_id: str, index: int) -> None:
        self.device_id = device_id
        self.index = index
        self.status = DeviceStatus.ENABLED
        self.status_reason: str | None = None
        self.auth_type = "selfSigned"
        self.primary_tp: str | None = None
        self.secondary_tp: str | None = None
        self.etag = new_etag()
        self.generation = next(_etag_counter)
        self.connection_state = "Disconnected"
        self.conn_seq = 0
        self.desired: dict[str, Any] | None = None
        self.reported: dict[str, Any] | None = None
        self.reported_flat = True  # reported is two-level (see is_two_level)
        self.tags: dict[str, Any] | None = None
        self.desired_version = 1
        self.reported_version = 1
        self.version = 1
        self.session: DeviceSession | None = None
        # the operator's fields of the identity (capabilities, deviceScope, parentScopes...)
        self.document: dict[str, Any] | None = None

    def set_reported(self, doc: dict[str, Any] | None) -> None:
        self.reported = doc
        self.reported_flat = doc is None or is_two_level(doc)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars), faster than copy.deepcopy."""
    t = type(value)
    if t is dict:
        return {k: v if type(v) in _SCALARS else json_copy(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _SCALARS else json_copy(v) for v in value]
    if t in _SCALARS:
        return value
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return value


def is_two_level(doc: dict[str, Any]) -> bool:
    """True when every value is a scalar or a dict of scalars (copied by copy_two_level)."""
    for v in doc.values():
        c = v.__class__
        if c in _SCALARS:
            continue
        if c is not dict or any(x.__class__ not in _SCALARS for x in v.values()):
            return False
    return True


def copy_two_level(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a document for which :func:`is_two_level` holds."""
    return {k: v if v.__class__ is not dict else {**v} for k, v in doc.items()}


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge-patch (RFC 7396) of ``patch`` into a copy of ``target``."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key)
            out[key] = merge_patch(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = json_copy(value)
    return out
