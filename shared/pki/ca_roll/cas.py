"""The CAs the issuer uses: their names per generation, the active CA and the older ones
still in use (:class:`CaSet`), loaded from the roll record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.ca_roll import CaEntry, CaRollStore
from shared.domain.errors import InvalidRequestError
from shared.pki.authority import authority_from_parts, load_authority
from shared.pki.ca_roll.keys import IssuingKeys
from shared.pki.local_ca import ISSUING_CERT_NAME, ISSUING_CRL_NAME
from shared.ports import CrlPublisher, IssuingAuthority
from shared.settings import Settings

__all__ = [
    "DEFAULT_CA_NAME",
    "ROLL_ACTOR",
    "CaSet",
    "PublishedCa",
    "ca_names",
    "load_ca_set",
    "published_ca",
    "roll_fingerprint",
]


#: the name the deployment gives the first issuing CA in DPS and IoT Hub (post-deploy.sh)
DEFAULT_CA_NAME = "certroll-issuing"
ROLL_ACTOR = "system:ca-roll"


def ca_names(generation: int, base_name: str = DEFAULT_CA_NAME) -> tuple[str, str, str]:
    """(CRL blob, certificate blob, DPS/hub name) of a CA generation; generation 1 keeps the
    names the deployment gave the first CA."""
    if generation <= 1:
        return ISSUING_CRL_NAME, ISSUING_CERT_NAME, base_name
    return (
        f"crl/issuing-{generation}.crl",
        f"ca/issuing-{generation}.pem",
        f"{base_name}-{generation}",
    )


@dataclass(frozen=True)
class PublishedCa:
    """A CA the issuer publishes a CRL for."""

    authority: IssuingAuthority
    crl_name: str
    cert_name: str
    ca_id: str = "issuing-1"


@dataclass(frozen=True)
class CaSet:
    """The active CA and the older ones still in use."""

    active: PublishedCa
    others: tuple[PublishedCa, ...] = ()

    def key_ids(self) -> tuple[str, ...]:
        return (self.active.authority.key_id, *(o.authority.key_id for o in self.others))


def _certificate(pem: str | None, what: str) -> x509.Certificate:
    if not pem:
        raise InvalidRequestError("ca_certificate_missing", f"{what} has no certificate yet")
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def published_ca(
    entry: CaEntry,
    keys: IssuingKeys,
    crl_publisher: CrlPublisher,
    root: x509.Certificate | None,
) -> PublishedCa:
    key = keys.open(entry.key_backend, entry.key_ref)
    authority = authority_from_parts(
        [_certificate(entry.certificate_pem, entry.ca_id)],
        key,
        entry.key_id,
        crl_url=crl_publisher.url_for(entry.crl_name),
        root=root,
    )
    return PublishedCa(authority, entry.crl_name, entry.cert_name, entry.ca_id)


def roll_fingerprint(store: CaRollStore) -> object:
    """What decides the CA set: the active CA and the live ones (a cheap read)."""
    record = store.get()
    if record is None:
        return None
    return (record.active_ca_id, tuple(ca.ca_id for ca in record.cas if ca.live))


def load_ca_set(
    settings: Settings,
    crl_publisher: CrlPublisher,
    store: CaRollStore,
    *,
    keys: IssuingKeys | None = None,
    fetch: Callable[[str], bytes] | None = None,
) -> CaSet:
    """The CAs to issue and publish with: the record's active CA and the live older ones;
    the CA of the settings when no roll has switched issuance yet."""
    record = store.get()
    base = load_authority(settings, crl_url=crl_publisher.url_for(ISSUING_CRL_NAME), fetch=fetch)
    settings_ca = PublishedCa(base, ISSUING_CRL_NAME, ISSUING_CERT_NAME)
    if record is None or record.active_ca_id is None:
        return CaSet(settings_ca)
    opener = keys or IssuingKeys(settings)
    live = [ca for ca in record.cas if ca.live]
    loaded = {
        ca.ca_id: (
            settings_ca
            if ca.generation == 1
            else published_ca(ca, opener, crl_publisher, base.root)
        )
        for ca in live
    }
    active = loaded.get(record.active_ca_id)
    if active is None:
        raise InvalidRequestError(
            "ca_roll_record_invalid", f"the active CA {record.active_ca_id} is not live"
        )
    return CaSet(active, tuple(p for cid, p in loaded.items() if cid != record.active_ca_id))
