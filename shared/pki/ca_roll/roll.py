"""The CA roll (:mod:`shared.pki.ca_roll`): every step, ``retire`` the last."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.ca_roll import (
    CaEntry,
    CaRollIncompleteError,
    CaStatus,
    RollMode,
    RollState,
    RollStep,
    check_step,
)
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.pki.ca_roll.base import RollResult
from shared.pki.ca_roll.cas import _certificate
from shared.pki.ca_roll.root import build_root_crl
from shared.pki.ca_roll.switch import _SwitchSteps
from shared.pki.local_ca import ROOT_CRL_NAME

__all__ = ["CaRoll"]


class CaRoll(_SwitchSteps):
    """The CA-roll steps (:mod:`shared.pki.ca_roll`)."""

    def run(self, step: RollStep, actor: str, **options: Any) -> RollResult:
        """Run ``step`` (see the methods); CaRollStepError when out of order."""
        method: Callable[..., RollResult] = getattr(self, step.value)
        return method(actor=actor, **options)

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
