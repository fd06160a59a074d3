"""The steps that make the new CA: ``prepare`` (key and CSR), ``install`` (its certificate)
and ``verify`` (uploaded to DPS and IoT Hub, possession proven)."""

from __future__ import annotations

import logging
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.ca_roll import (
    CaCertificateService,
    CaEntry,
    CaStatus,
    RollMode,
    RollState,
    RollStep,
    check_step,
)
from shared.domain.certs import sha1_thumbprint, sha256_thumbprint, spki_der
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.pki.authority import authority_from_parts
from shared.pki.ca_roll.base import RollResult, _required, _RollBase
from shared.pki.ca_roll.cas import _certificate, _pem, ca_names
from shared.pki.ca_roll.keys import _key_id
from shared.pki.ceremony import (
    DEFAULT_ISSUING_DAYS,
    build_issuing_csr,
    build_verification_certificate,
    load_csr,
    parse_subject,
    sign_issuing_csr,
)
from shared.pki.local_ca import ROOT_CRL_NAME

logger = logging.getLogger(__name__)


class _NewCaSteps(_RollBase):
    """``prepare``, ``install`` and ``verify``."""

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
