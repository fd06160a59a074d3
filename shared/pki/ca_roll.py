"""The CA roll: move the fleet from the issuing CA in use to a new one (docs/ca-roll.md).

:class:`CaRoll` runs the steps of :mod:`shared.domain.ca_roll`, each idempotent and
resumable from the record it reads and writes (ETag-checked):

``prepare``  a new issuing key in the configured key store (a new label in the PKCS#11
             token, a new version of the Key Vault / Managed HSM key, or a development
             file) and its CSR (:func:`shared.pki.ceremony.build_issuing_csr`, signed in
             the key store).
``install``  the certificate the offline root signed for that CSR (``certroll pki
             sign-issuing``), checked against the key, the CSR and the root; or, where the
             root key is local (development, the demo), signed here by the same ceremony
             function.
``verify``   the new CA uploaded to DPS and IoT Hub and proven (verification code →
             :func:`shared.pki.ceremony.build_verification_certificate` signed by the new
             key in the key store → verify).
``trust``    every enrollment group that trusts the old CA gets the new one beside it
             (the slot not holding the old one: ``signingCertificates`` or
             ``caReferences``); the new CA's certificate and first CRL are published and
             the record makes it the active CA: the issuer signs under it from now on.
``reissue``  a campaign re-issues every device whose certificate the old CA signed
             (reason ``ca-roll``; ``compromise`` in compromise mode) through the
             :class:`~shared.domain.ca_roll.CampaignRunner`.
``retire``   once no device presents an old-CA certificate: the new CA alone in the
             groups (primary slot), the old CA's final CRL published, its entry kept in
             the record as ``retired``; in compromise mode the old CA is also revoked in
             a new root CRL (``revoked``).

:class:`RollingIssuer` is the issuer that knows the CAs of the record: it signs under the
active one, publishes one CRL per CA still in use (each listing only its own leaves, at
the CRL distribution point its leaves carry) and picks up a switch made by another
process within ``refresh_seconds``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from shared.domain.ca_roll import (
    CaCertificateService,
    CaEntry,
    CampaignRunner,
    CaRollIncompleteError,
    CaRollRecord,
    CaRollStore,
    CaStatus,
    RollMode,
    RollState,
    RollStep,
    check_step,
)
from shared.domain.campaign import Campaign
from shared.domain.certs import sha1_thumbprint, sha256_thumbprint, spki_der
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.messages import format_time
from shared.domain.model import (
    AuditEvent,
    CertificateSlot,
    CertificateStatus,
    EnrollmentGroup,
    RevocationReason,
    Trigger,
    Twin,
)
from shared.pki.algorithms import signature_hash
from shared.pki.authority import authority_from_parts, configured_key_backend, load_authority
from shared.pki.ceremony import (
    DEFAULT_ISSUING_DAYS,
    build_issuing_csr,
    build_verification_certificate,
    load_csr,
    parse_subject,
    sign_issuing_csr,
)
from shared.pki.issuer import Issuer, der_to_pem
from shared.pki.local_ca import (
    ISSUING_CERT_NAME,
    ISSUING_CRL_NAME,
    ROOT_CERT_FILE,
    ROOT_CRL_NAME,
    ROOT_KEY_FILE,
)
from shared.pki.profile import signature_hash_for
from shared.ports import (
    AuditLog,
    CertificateLedger,
    Clock,
    CrlPublisher,
    DeviceRegistry,
    EnrollmentStore,
    IssuingAuthority,
)
from shared.settings import Settings

logger = logging.getLogger(__name__)

#: the name the deployment gives the first issuing CA in DPS and IoT Hub (post-deploy.sh)
DEFAULT_CA_NAME = "certroll-issuing"
ROLL_ACTOR = "system:ca-roll"
ROOT_CRL_VALIDITY = timedelta(days=30)


# --------------------------------------------------------------------------- the CAs


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


class IssuingKeys:
    """Issuing keys in the configured key store: made for a new CA, opened by reference."""

    def __init__(self, settings: Settings, *, credential: Any | None = None) -> None:
        self.settings = settings
        self.credential = credential

    @property
    def backend(self) -> str:
        return configured_key_backend(self.settings)

    def create(self, name: str) -> tuple[CertificateIssuerPrivateKeyTypes, str, str]:
        """A new key pair named after ``name`` (reserved in the roll record before the key
        is made): ``(key, backend, key_ref)``. For file and PKCS#11 the reference follows
        from the name, so a ``prepare`` retried after a crash finds the key it made."""
        backend = self.backend
        home = self.settings.home
        if backend == "file":
            from shared.adapters.filekey import load_file_key
            from shared.pki.local_ca import _encrypted_pem, _write_private, file_key_password

            password = file_key_password(home, self.settings, create=True)
            path = self.settings.pki_dir / f"issuing-key-{name}.pem"
            if not path.is_file():
                fresh = ec.generate_private_key(ec.SECP384R1())
                _write_private(path, _encrypted_pem(fresh, password))
            return load_file_key(path, password), backend, str(path)
        if backend == "pkcs11":
            from shared.adapters import pkcs11 as p11
            from shared.pki.local_ca import pkcs11_pin

            label = f"{self.settings.get('CERTROLL_PKCS11_KEY_LABEL')}-{name}"
            try:
                key = p11.create_issuing_key(
                    module=p11.module_path(self.settings.get("CERTROLL_PKCS11_MODULE")),
                    token_label=self.settings.get("CERTROLL_PKCS11_TOKEN"),
                    key_label=label,
                    pin=pkcs11_pin(home, self.settings),
                    softhsm_home=home / "softhsm",
                )
            except ConflictError:  # made by an earlier attempt of this step
                return self.open(backend, label), backend, label
            return key, backend, label
        if backend == "keyvault":
            from shared.adapters.keyvault import create_key_version, open_keyvault_key

            key_id = create_key_version(
                self.settings.get("CERTROLL_KEYVAULT_KEY_ID"), credential=self.credential
            )
            return open_keyvault_key(key_id, self.credential), backend, key_id
        raise InvalidRequestError("key_backend_invalid", f"unknown key backend {backend!r}")

    def open(self, backend: str, key_ref: str) -> CertificateIssuerPrivateKeyTypes:
        if backend == "file":
            from shared.adapters.filekey import load_file_key
            from shared.pki.local_ca import file_key_password

            return load_file_key(
                Path(key_ref), file_key_password(self.settings.home, self.settings)
            )
        if backend == "pkcs11":
            from shared.adapters import pkcs11 as p11
            from shared.pki.local_ca import pkcs11_pin

            module = p11.module_path(self.settings.get("CERTROLL_PKCS11_MODULE"))
            if p11.is_softhsm(module):
                p11.softhsm_environment(self.settings.home / "softhsm")
            return p11.open_pkcs11_key(
                module=module,
                token_label=self.settings.get("CERTROLL_PKCS11_TOKEN"),
                key_label=key_ref,
                pin=pkcs11_pin(self.settings.home, self.settings),
            )
        if backend == "keyvault":
            from shared.adapters.keyvault import open_keyvault_key

            return open_keyvault_key(key_ref, self.credential)
        raise InvalidRequestError("key_backend_invalid", f"unknown key backend {backend!r}")


def _key_id(key: CertificateIssuerPrivateKeyTypes, fallback: str) -> str:
    return str(getattr(key, "key_id", fallback))


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


# --------------------------------------------------------------------------- issuer


class RollingIssuer(Issuer):
    """The issuer over a :class:`CaSet` (module docstring)."""

    def __init__(
        self,
        cas: CaSet,
        *args: Any,
        reload: Callable[[], CaSet] | None = None,
        watch: Callable[[], object] | None = None,
        refresh_seconds: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(cas.active.authority, *args, **kwargs)
        self.cas = cas
        self._reload = reload
        self._watch = watch
        self._seen = watch() if watch is not None else None
        self._refresh_seconds = refresh_seconds
        self._checked = time.monotonic()
        self._switch_lock = threading.Lock()

    def use(self, cas: CaSet) -> None:
        """Issue under ``cas.active`` from now on; publish CRLs for all of ``cas``."""
        with self._switch_lock:
            self.cas = cas
            self.authority = cas.active.authority
            chain = cas.active.authority.chain or (cas.active.authority.certificate,)
            self._chain_pem = "".join(_pem(c) for c in chain)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the CA set (at most every ``refresh_seconds`` unless ``force``)."""
        if self._reload is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self._refresh_seconds:
            return
        self._checked = now
        if self._watch is not None:
            seen = self._watch()
            if seen == self._seen and not force:
                return
            self._seen = seen
        cas = self._reload()
        if cas.key_ids() != self.cas.key_ids():
            logger.info("issuing CA switched to %s", cas.active.authority.key_id)
            self.use(cas)

    def issue(self, *args: Any, **kwargs: Any) -> Any:
        self.refresh()
        return super().issue(*args, **kwargs)

    def build_crl(
        self,
        next_update_hours: int = 24,
        *,
        ca: PublishedCa | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """The CRL of ``ca`` (default: the active CA), signed by its key. With more than
        one CA in use, each CRL lists only the certificates its own key signed."""
        if not 1 <= next_update_hours <= 24 * 31:
            raise ValueError("next_update_hours must be 1-744")
        chosen = ca or self.cas.active
        authority = chosen.authority
        only_own = bool(self.cas.others) or ca is not None
        now = self.clock.now()
        cert = authority.certificate
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(now)
            .next_update(next_update or now + timedelta(hours=next_update_hours))
            .add_extension(x509.CRLNumber(self._next_crl_number()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
        )
        for record in self.ledger.list_revoked():
            if record.not_after <= now:
                continue
            if only_own and record.issuer_key_id != authority.key_id:
                continue
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(record.serial, 16))
                .revocation_date(record.revoked_at or now)
            )
            reason = record.revocation_reason or RevocationReason.UNSPECIFIED
            if reason is not RevocationReason.UNSPECIFIED:
                entry = entry.add_extension(
                    x509.CRLReason(x509.ReasonFlags(reason.value)), critical=False
                )
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(authority.key, signature_hash_for(authority))
        return crl.public_bytes(serialization.Encoding.DER)

    def _publish(self, ca: PublishedCa, der: bytes) -> str:
        if self.crl_publisher is None:
            raise InvalidRequestError("crl_publisher_missing", "no CRL publisher is configured")
        url = self.crl_publisher.publish(ca.crl_name, der, "application/pkix-crl")
        chain = ca.authority.chain or (ca.authority.certificate,)
        self.crl_publisher.publish(
            ca.cert_name, "".join(_pem(c) for c in chain).encode("ascii"), "application/x-pem-file"
        )
        return url

    def publish_crl(self, next_update_hours: int = 24) -> str:
        """Publish the CRL (and certificate) of every CA in use; the active CA's CRL URL."""
        self.refresh()
        url = self._publish(self.cas.active, self.build_crl(next_update_hours))
        for other in self.cas.others:
            self._publish(other, self.build_crl(next_update_hours, ca=other))
        self._audit("crl_publish", "ok", "system:issuer", None, None, {"url": url})
        return url

    def publish_final_crl(self, ca: PublishedCa) -> str:
        """The retired CA's last CRL, valid until the CA itself expires."""
        until = ca.authority.certificate.not_valid_after_utc
        der = self.build_crl(ca=ca, next_update=max(until, self.clock.now() + timedelta(hours=1)))
        url = self._publish(ca, der)
        self._audit("crl_publish", "ok", ROLL_ACTOR, None, None, {"url": url, "final": True})
        return url


# --------------------------------------------------------------------------- root CRL


def build_root_crl(
    root_certificate: x509.Certificate,
    root_key: CertificateIssuerPrivateKeyTypes,
    revoked: Sequence[tuple[x509.Certificate, datetime]],
    *,
    now: datetime,
    previous: x509.CertificateRevocationList | None = None,
    validity: timedelta = ROOT_CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """The root's CRL: the entries of ``previous`` plus each issuing CA of ``revoked``
    (``cACompromise``), signed by the root key (on the offline root machine)."""
    if spki_der(root_key.public_key()) != spki_der(root_certificate.public_key()):
        raise InvalidRequestError("root_key_mismatch", "the root key is not the root's")
    for cert, _at in revoked:
        if cert.issuer != root_certificate.subject:
            raise InvalidRequestError(
                "not_issued_by_root", f"{cert.subject.rfc4514_string()} is not the root's"
            )
    ski = root_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_certificate.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    listed: set[int] = set()
    for cert, at in revoked:
        listed.add(cert.serial_number)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(at)
            .add_extension(x509.CRLReason(x509.ReasonFlags.ca_compromise), critical=False)
            .build()
        )
    for entry in previous or ():
        if entry.serial_number not in listed:
            builder = builder.add_revoked_certificate(entry)
    return builder.sign(root_key, signature_hash(root_key))


# --------------------------------------------------------------------------- the roll


@dataclass(frozen=True)
class LocalRoot:
    """The root CA's certificate and key on this machine (development and the demo: in
    production the root is offline and ``install`` takes the certificate it signed)."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @classmethod
    def from_pki_dir(cls, settings: Settings) -> LocalRoot | None:
        from shared.pki.ceremony import load_private_key
        from shared.pki.local_ca import file_key_password

        cert_path = settings.pki_dir / ROOT_CERT_FILE
        key_path = settings.pki_dir / ROOT_KEY_FILE
        if not (cert_path.is_file() and key_path.is_file()):
            return None
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        password = file_key_password(settings.home, settings)
        key = load_private_key(key_path.read_bytes(), password, "root key")
        return cls(cert, key)


@dataclass
class CaRollDeps:
    store: CaRollStore
    keys: IssuingKeys
    issuer: RollingIssuer
    enrollments: EnrollmentStore
    registry: DeviceRegistry
    ledger: CertificateLedger
    audit: AuditLog
    crl_publisher: CrlPublisher
    clock: Clock
    campaigns: CampaignRunner
    dps_certificates: CaCertificateService | None = None
    hub_certificates: CaCertificateService | None = None
    local_root: Callable[[], LocalRoot | None] = lambda: None
    backdate: timedelta = timedelta(seconds=300)
    base_name: str = DEFAULT_CA_NAME


@dataclass
class RollResult:
    """What a step did (``changed`` False: it had been done; the record is returned)."""

    step: RollStep
    changed: bool
    record: CaRollRecord
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "changed": self.changed,
            "detail": self.detail,
            "roll": self.record.to_dict(),
        }


class CaRoll:
    """The CA-roll steps (module docstring)."""

    def __init__(self, deps: CaRollDeps) -> None:
        self.deps = deps

    # ----------------------------------------------------------------- record

    def status(self) -> CaRollRecord:
        record = self.deps.store.get()
        return record if record is not None else self._initial_record()

    def _initial_record(self) -> CaRollRecord:
        """A record describing the CA of the settings (generation 1), before any roll."""
        authority = self.deps.issuer.cas.active.authority
        crl_name, cert_name, service_name = ca_names(1, self.deps.base_name)
        first = CaEntry(
            ca_id="issuing-1",
            generation=1,
            key_backend=self.deps.keys.backend,
            key_ref="settings",
            key_id=authority.key_id,
            status=CaStatus.ACTIVE,
            crl_name=crl_name,
            cert_name=cert_name,
            service_name=service_name,
            certificate_pem=_pem(authority.certificate),
            created_at=authority.certificate.not_valid_before_utc,
            activated_at=authority.certificate.not_valid_before_utc,
        )
        return CaRollRecord(cas=[first], active_ca_id=None)

    def _save(self, record: CaRollRecord, actor: str) -> CaRollRecord:
        record.updated_at = self.deps.clock.now()
        record.updated_by = actor
        return self.deps.store.put(record)

    def _audit(self, step: RollStep, outcome: str, actor: str, **detail: Any) -> None:
        self.deps.audit.append(
            AuditEvent(
                action=f"ca_roll_{step.value}",
                outcome=outcome,
                actor=actor,
                detail=detail,
                at=self.deps.clock.now(),
            )
        )

    def _current_ca_id(self, record: CaRollRecord) -> str:
        return record.active_ca_id or "issuing-1"

    # ----------------------------------------------------------------- steps

    def run(self, step: RollStep, actor: str, **options: Any) -> RollResult:
        """Run ``step`` (see the methods); CaRollStepError when out of order."""
        method: Callable[..., RollResult] = getattr(self, step.value)
        return method(actor=actor, **options)

    def prepare(
        self,
        actor: str,
        *,
        mode: RollMode = RollMode.NORMAL,
        subject: str | None = None,
    ) -> RollResult:
        """A new key in the key store and its CSR; the roll begins."""
        record = self.status()
        if record.state is RollState.PREPARED and record.mode is mode:
            return RollResult(RollStep.PREPARE, False, record)
        check_step(record, RollStep.PREPARE)
        old = record.entry(self._current_ca_id(record))
        generation = max(ca.generation for ca in record.cas) + 1
        if not record.pending_key:  # reserve the key's name first: a retry finds the key
            record.pending_key = f"{generation}-{uuid.uuid4().hex[:8]}"
            record = self._save(record, actor)
        key, backend, key_ref = self.deps.keys.create(_required(record.pending_key, "key"))
        old_cert = _certificate(old.certificate_pem, old.ca_id)
        name = parse_subject(subject) if subject else old_cert.subject
        csr = build_issuing_csr(key, name)
        crl_name, cert_name, service_name = ca_names(generation, self.deps.base_name)
        entry = CaEntry(
            ca_id=f"issuing-{generation}",
            generation=generation,
            key_backend=backend,
            key_ref=key_ref,
            key_id=_key_id(key, key_ref),
            status=CaStatus.PENDING,
            crl_name=crl_name,
            cert_name=cert_name,
            service_name=service_name,
            csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            created_at=self.deps.clock.now(),
        )
        record.cas = [ca for ca in record.cas if ca.ca_id != entry.ca_id] + [entry]
        record.state = RollState.PREPARED
        record.mode = mode
        record.old_ca_id = old.ca_id
        record.new_ca_id = entry.ca_id
        record.switched_at = None
        record.selection = None
        record.campaign_ids = []
        record.groups = []
        record.verified_in = []
        record.pending_key = None
        saved = self._save(record, actor)
        self._audit(RollStep.PREPARE, "ok", actor, ca=entry.ca_id, keyId=entry.key_id, mode=mode)
        logger.info("CA roll: %s prepared (%s key %s)", entry.ca_id, backend, entry.key_id)
        return RollResult(RollStep.PREPARE, True, saved, {"csr": entry.csr_pem})

    def install(
        self,
        actor: str,
        *,
        certificate_pem: str | None = None,
        days: int = DEFAULT_ISSUING_DAYS,
    ) -> RollResult:
        """The new CA's certificate: given (signed on the offline root), or signed here by
        a local root. It must carry the new key, chain to the root and be a CA."""
        record = self.status()
        check_step(record, RollStep.INSTALL)
        new = record.new
        now = self.deps.clock.now()
        csr = load_csr(_required(new.csr_pem, "the CSR").encode("ascii"))
        root = self.deps.local_root()
        root_cert = self.deps.issuer.cas.active.authority.root or (
            root.certificate if root else None
        )
        if certificate_pem:
            cert = x509.load_pem_x509_certificates(certificate_pem.encode("ascii"))[0]
        elif root is not None:
            cert = sign_issuing_csr(
                csr,
                root.certificate,
                root.key,
                now=now,
                days=days,
                root_crl_url=self.deps.crl_publisher.url_for(ROOT_CRL_NAME),
            )
        else:
            raise InvalidRequestError(
                "ca_certificate_missing",
                "give the certificate the offline root signed for the CSR "
                "(certroll pki sign-issuing)",
            )
        if spki_der(cert.public_key()) != spki_der(csr.public_key()):
            raise InvalidRequestError(
                "ca_certificate_mismatch", "the certificate is not for the new CA's key"
            )
        key = self.deps.keys.open(new.key_backend, new.key_ref)
        authority_from_parts([cert], key, new.key_id, crl_url=None)  # the key's, and a CA
        if root_cert is not None:
            try:
                cert.verify_directly_issued_by(root_cert)
            except Exception as exc:
                raise InvalidRequestError(
                    "ca_certificate_untrusted", "the certificate is not signed by the root"
                ) from exc
        new.certificate_pem = _pem(cert)
        record.state = RollState.CERTIFIED
        saved = self._save(record, actor)
        self._audit(
            RollStep.INSTALL,
            "ok",
            actor,
            ca=new.ca_id,
            serial=format(cert.serial_number, "x"),
            thumbprint=sha256_thumbprint(cert),
        )
        return RollResult(RollStep.INSTALL, True, saved, {"thumbprint": sha256_thumbprint(cert)})

    def _prove(self, service: CaCertificateService, entry: CaEntry) -> bool:
        """Upload ``entry`` to one service and prove possession; False when it was so."""
        pem = _required(entry.certificate_pem, "the certificate")
        cert = _certificate(pem, entry.ca_id)
        try:
            info = service.get(entry.service_name)
            if info.thumbprint_sha256.lower() not in (
                sha256_thumbprint(cert),
                sha1_thumbprint(cert),
            ):
                info = service.upload(entry.service_name, pem, etag=info.etag)
        except NotFoundError:
            info = service.upload(entry.service_name, pem)
        if info.verified:
            return False
        info = service.generate_verification_code(entry.service_name, info.etag)
        key = self.deps.keys.open(entry.key_backend, entry.key_ref)
        proof = build_verification_certificate(
            cert, key, _required(info.verification_code, "the code"), now=self.deps.clock.now()
        )
        service.verify(entry.service_name, info.etag, _pem(proof))
        return True

    def verify(self, actor: str) -> RollResult:
        """The new CA uploaded to DPS and IoT Hub, proof of possession done in each."""
        record = self.status()
        check_step(record, RollStep.VERIFY)
        services = {"dps": self.deps.dps_certificates, "hub": self.deps.hub_certificates}
        missing = [name for name, svc in services.items() if svc is None]
        if missing:
            raise InvalidRequestError(
                "ca_verify_unavailable",
                f"no access to the {' and '.join(missing)} CA certificates here: run "
                "`certroll ca roll verify` with --dps-resource-id and --hub-resource-id",
            )
        new = record.new
        proven: dict[str, bool] = {}
        for name, svc in services.items():
            assert svc is not None
            proven[name] = self._prove(svc, new)
            if name not in record.verified_in:
                record.verified_in.append(name)
        record.state = RollState.VERIFIED
        saved = self._save(record, actor)
        self._audit(RollStep.VERIFY, "ok", actor, ca=new.ca_id, name=new.service_name, **proven)
        return RollResult(RollStep.VERIFY, any(proven.values()), saved, proven)

    def _groups(self) -> list[EnrollmentGroup]:
        groups: list[EnrollmentGroup] = []
        continuation: str | None = None
        while True:
            page = self.deps.enrollments.query_groups(100, continuation)
            groups.extend(page.items)
            continuation = page.continuation
            if not continuation:
                return groups

    def _set_group(self, group_id: str, primary: CaEntry, secondary: CaEntry | None) -> bool:
        """Write ``primary``/``secondary`` into the group's slots (certificates or CA
        references, whichever the group uses); False when they were there."""
        for _attempt in range(8):
            group = self.deps.enrollments.get_group(group_id)
            by_reference = bool(group.ca_primary or group.ca_secondary)
            if by_reference:
                want = (primary.service_name, secondary.service_name if secondary else None)
                if (group.ca_primary, group.ca_secondary) == want:
                    return False
                group.ca_primary, group.ca_secondary = want
            else:
                want_tp = (_thumb(primary), _thumb(secondary) if secondary else None)
                have = tuple(
                    s.thumbprint_sha256 if s else None for s in (group.primary, group.secondary)
                )
                if have == want_tp:
                    return False
                group.primary = CertificateSlot(pem=primary.certificate_pem)
                group.secondary = (
                    CertificateSlot(pem=secondary.certificate_pem) if secondary else None
                )
            try:
                self.deps.enrollments.put_group(group)
                return True
            except ConcurrencyError:
                continue
        raise ConcurrencyError(f"enrollment group {group_id} kept changing")

    def _trusting_groups(self, record: CaRollRecord) -> list[str]:
        old, new = record.old, record.new
        names = {old.service_name, new.service_name}
        thumbs = {_thumb(old), _thumb(new)}
        found = []
        for group in self._groups():
            refs = {group.ca_primary, group.ca_secondary}
            slots = {s.thumbprint_sha256 for s in (group.primary, group.secondary) if s}
            if refs & names or slots & thumbs:
                found.append(group.group_id)
        return sorted(set(found) | set(record.groups))

    def trust(self, actor: str) -> RollResult:
        """New CA beside the old one in every group trusting the old one (compromise:
        instead of it); then issue under the new CA."""
        record = self.status()
        check_step(record, RollStep.TRUST)
        new = record.new
        old = record.old
        groups = self._trusting_groups(record)
        changed = []
        for group_id in groups:
            if record.mode is RollMode.COMPROMISE:
                wrote = self._set_group(group_id, new, None)
            else:
                wrote = self._set_group(group_id, old, new)
            if wrote:
                changed.append(group_id)
        now = self.deps.clock.now()
        new.status = CaStatus.ACTIVE
        new.activated_at = now
        old.status = CaStatus.RETIRING
        record.active_ca_id = new.ca_id
        record.switched_at = now
        record.selection = (
            "SELECT * FROM devices WHERE properties.reported.x509.notBefore < "
            f"'{format_time(now - self.deps.backdate + timedelta(seconds=1))}'"
        )
        record.groups = groups
        record.state = RollState.TRUSTED
        saved = self._save(record, actor)
        issuer = self.deps.issuer
        issuer.use(self._ca_set(saved))
        issuer.publish_crl()
        self._audit(RollStep.TRUST, "ok", actor, ca=new.ca_id, groups=groups, changed=changed)
        logger.info("CA roll: issuing under %s; groups %s trust both", new.ca_id, groups)
        return RollResult(RollStep.TRUST, True, saved, {"groups": groups, "changed": changed})

    def _ca_set(self, record: CaRollRecord) -> CaSet:
        current = self.deps.issuer.cas
        known = {p.ca_id: p for p in (current.active, *current.others)}
        live: dict[str, PublishedCa] = {}
        for ca in record.cas:
            if not ca.live:
                continue
            live[ca.ca_id] = known.get(ca.ca_id) or published_ca(
                ca, self.deps.keys, self.deps.crl_publisher, current.active.authority.root
            )
        active = live[_required(record.active_ca_id, "the active CA")]
        return CaSet(active, tuple(p for cid, p in live.items() if cid != active.ca_id))

    def reissue(self, actor: str) -> RollResult:
        """A campaign re-issuing every device still on the old CA; running again after a
        finished campaign starts one for the devices left, if any."""
        record = self.status()
        check_step(record, RollStep.REISSUE)
        if record.campaign_ids:
            last = self.deps.campaigns.status(record.campaign_ids[-1])
            if last.state.value in ("running", "paused"):
                return RollResult(RollStep.REISSUE, False, record, _campaign_detail(last))
        left = self.remaining(record)
        if record.campaign_ids and not left:
            return RollResult(RollStep.REISSUE, False, record, {"remaining": 0})
        reason = Trigger.COMPROMISE if record.mode is RollMode.COMPROMISE else Trigger.CA_ROLL
        campaign_id = self.deps.campaigns.start(
            _required(record.selection, "the selection"), reason, actor
        )
        record.campaign_ids.append(campaign_id)
        record.state = RollState.REISSUING
        saved = self._save(record, actor)
        self._audit(RollStep.REISSUE, "ok", actor, campaign=campaign_id, reason=reason.value)
        return RollResult(
            RollStep.REISSUE, True, saved, {"campaign": campaign_id, "devices": len(left)}
        )

    #: devices that do not report a certificate in their twin (offline since they were
    #: provisioned, or an agent that does not report): judged from the ledger
    SILENT_QUERY = "SELECT * FROM devices WHERE NOT IS_DEFINED(properties.reported.x509.thumbprint)"

    def _twins(self, query: str) -> Iterator[Twin]:
        continuation: str | None = None
        while True:
            page = self.deps.registry.query_twins(query, 1000, continuation)
            yield from page.items
            continuation = page.continuation
            if not continuation:
                return

    def remaining(self, record: CaRollRecord | None = None) -> list[str]:
        """Devices still on the old CA: those whose reported certificate the new key did
        not sign, and those reporting none whose ledger still holds a valid certificate
        of another key (so a device that never reported cannot slip past ``retire``)."""
        rec = record or self.status()
        if not rec.selection or not rec.new_ca_id:
            return []
        new_key = rec.new.key_id
        ledger = self.deps.ledger
        left: list[str] = []
        for twin in self._twins(rec.selection):
            reported = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
            thumbprint = reported.get("thumbprint") if isinstance(reported, dict) else None
            found = ledger.find_by_thumbprint(str(thumbprint).lower()) if thumbprint else None
            if found is None or found.issuer_key_id != new_key:
                left.append(twin.device_id)
        now = self.deps.clock.now()
        usable = (CertificateStatus.ISSUED, CertificateStatus.ACTIVE)
        for twin in self._twins(self.SILENT_QUERY):
            held = [
                r
                for r in ledger.list_for_device(twin.device_id)
                if r.status in usable and r.not_after > now
            ]
            if held and not any(r.issuer_key_id == new_key for r in held):
                left.append(twin.device_id)
        return left

    def retire(
        self,
        actor: str,
        *,
        force: bool = False,
        root_crl_der: bytes | None = None,
    ) -> RollResult:
        """The new CA alone in the groups, the old CA's final CRL, the record closed."""
        record = self.status()
        check_step(record, RollStep.RETIRE)
        left = self.remaining(record)
        if left and not force:
            raise CaRollIncompleteError(len(left), left)
        old, new = record.old, record.new
        compromise = record.mode is RollMode.COMPROMISE
        root_crl_url = None
        if compromise:
            root_crl_url = self._revoke_in_root(old, root_crl_der)
        changed = [g for g in record.groups if self._set_group(g, new, None)]
        removed = self._forget(old)
        old_ca = next(
            (
                p
                for p in (self.deps.issuer.cas.active, *self.deps.issuer.cas.others)
                if p.ca_id == old.ca_id
            ),
            None,
        )
        final_url = self.deps.issuer.publish_final_crl(old_ca) if old_ca else None
        old.status = CaStatus.REVOKED if compromise else CaStatus.RETIRED
        old.retired_at = self.deps.clock.now()
        record.state = RollState.IDLE
        record.rolls_completed += 1
        saved = self._save(record, actor)
        self.deps.issuer.use(self._ca_set(saved))
        self._audit(
            RollStep.RETIRE,
            "ok",
            actor,
            ca=old.ca_id,
            status=old.status.value,
            groups=changed,
            finalCrl=final_url,
            rootCrl=root_crl_url,
            remaining=len(left),
        )
        detail: dict[str, Any] = {
            "groups": changed,
            "finalCrl": final_url,
            "remaining": len(left),
            "removedFrom": removed,
        }
        if root_crl_url:
            detail["rootCrl"] = root_crl_url
        return RollResult(RollStep.RETIRE, True, saved, detail)

    def _forget(self, old: CaEntry) -> list[str]:
        """Delete the old CA from DPS and the hub where this process may (after the groups
        no longer reference it): no CA-authenticated identity accepts its leaves any
        more. Where it may not (the API in Azure), the operator deletes it (docs)."""
        removed: list[str] = []
        services = {"dps": self.deps.dps_certificates, "hub": self.deps.hub_certificates}
        for name, service in services.items():
            if service is None:
                continue
            try:
                info = service.get(old.service_name)
                service.delete(old.service_name, info.etag)
            except NotFoundError:
                continue
            removed.append(name)
        return removed

    def _revoke_in_root(self, old: CaEntry, root_crl_der: bytes | None) -> str:
        """Publish a root CRL listing the old issuing CA: the one given (signed offline by
        ``certroll pki revoke-issuing``), or one signed here by a local root."""
        old_cert = _certificate(old.certificate_pem, old.ca_id)
        if root_crl_der is None:
            root = self.deps.local_root()
            if root is None:
                raise InvalidRequestError(
                    "root_crl_missing",
                    "compromise mode needs the root CRL listing the old CA: sign it on the "
                    "offline root with `certroll pki revoke-issuing` and give it to retire",
                )
            previous = None
            try:
                previous = x509.load_der_x509_crl(self.deps.crl_publisher.fetch(ROOT_CRL_NAME))
            except (NotFoundError, ValueError):
                previous = None
            crl = build_root_crl(
                root.certificate,
                root.key,
                [(old_cert, self.deps.clock.now())],
                now=self.deps.clock.now(),
                previous=previous,
            )
            root_crl_der = crl.public_bytes(serialization.Encoding.DER)
        crl = x509.load_der_x509_crl(root_crl_der)
        if crl.get_revoked_certificate_by_serial_number(old_cert.serial_number) is None:
            raise InvalidRequestError("root_crl_invalid", f"the root CRL does not list {old.ca_id}")
        return self.deps.crl_publisher.publish(ROOT_CRL_NAME, root_crl_der, "application/pkix-crl")

    def campaign(self, record: CaRollRecord | None = None) -> Campaign | None:
        rec = record or self.status()
        if not rec.campaign_ids:
            return None
        return self.deps.campaigns.status(rec.campaign_ids[-1])


def _campaign_detail(campaign: Campaign) -> dict[str, Any]:
    cp = campaign.checkpoint
    return {
        "campaign": campaign.campaign_id,
        "state": campaign.state.value,
        "enqueued": cp.enqueued,
        "completed": cp.completed,
        "failed": cp.failed,
    }


def _thumb(entry: CaEntry) -> str:
    return sha256_thumbprint(_certificate(entry.certificate_pem, entry.ca_id))


def _required(value: str | None, what: str) -> str:
    if not value:
        raise InvalidRequestError("ca_roll_record_invalid", f"{what} is missing from the record")
    return value


__all__ = [
    "CaRoll",
    "CaRollDeps",
    "CaSet",
    "IssuingKeys",
    "LocalRoot",
    "PublishedCa",
    "RollResult",
    "RollingIssuer",
    "build_root_crl",
    "der_to_pem",
    "load_ca_set",
]
