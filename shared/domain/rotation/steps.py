"""The steps that move a request forward without the device: issue, enroll, deliver,
reprovision. Each performs idempotent side effects; issue, enroll and deliver are
written once, at the end (see :meth:`ForwardSteps.issue`)."""

from __future__ import annotations

import logging
from typing import Any

from shared.domain.certs import certificate_pem
from shared.domain.errors import CsrRejectedError, DeviceDisallowedError, DeviceOfflineError
from shared.domain.messages import format_time
from shared.domain.model import CertificateRecord, RotationRecord, Trigger
from shared.domain.retry import backoff
from shared.domain.rotation import transitions
from shared.domain.rotation.admissible import slot_refusal
from shared.domain.rotation.completion import Completion
from shared.domain.rotation.context import RotationContext, iso
from shared.domain.rotation.economy import hub_write_before_delivery
from shared.domain.rotation.slots import hub_accept, place_in_enrollment
from shared.domain.rotation.states import REPROVISION_METHOD, device_reason, trigger_of
from shared.ports import IssuedLike, in_rotation_trace

logger = logging.getLogger(__name__)


def leaf_chain(issued: IssuedLike) -> str:
    """The PEM chain to deliver: the leaf first, then the issuing chain."""
    leaf = certificate_pem(issued.certificate)
    chain = issued.chain_pem or ""
    if leaf.strip() in chain:
        return chain if chain.endswith("\n") else chain + "\n"
    return leaf + chain


_PEM_END = "-----END CERTIFICATE-----"


def leaf_chain_list(issued: IssuedLike) -> list[str]:
    """The chain to deliver as a list of PEM certificates, leaf first: IoT Hub limits each
    twin string value to 4 KB (iot-hub-devguide-device-twins.md), and a leaf with its
    issuing chain in one string can pass that; one certificate per string stays far
    below it."""
    return [
        part.strip() + "\n" + _PEM_END + "\n"
        for part in leaf_chain(issued).split(_PEM_END)
        if part.strip()
    ]


def renewal_request(ctx: RotationContext, rec: RotationRecord) -> dict[str, Any]:
    """The desired ``x509.renewal`` section asking the device for a CSR."""
    return {
        "requestId": rec.request_id,
        "reason": device_reason(rec.reason),
        "keyAlgorithm": ctx.policy.key_algorithm,
    }


@in_rotation_trace
def request_csr(ctx: RotationContext, rec: RotationRecord) -> None:
    patch = {"x509": {"renewal": renewal_request(ctx, rec), "issued": None}}
    ctx.call(ctx.deps.registry.patch_desired, rec.device_id, patch)


class ForwardSteps:
    def __init__(self, ctx: RotationContext, completion: Completion) -> None:
        self.ctx = ctx
        self.completion = completion

    def issue(
        self, rec: RotationRecord, *, defer_reprovision: bool, first_attempt: bool = False
    ) -> RotationRecord:
        """csr_received: sign (or find) the certificate, then enroll and deliver it."""
        try:
            issued = self.ctx.issue(rec, first_attempt=first_attempt)
        except CsrRejectedError as exc:
            return self.completion.fail(rec, exc.code, exc.message)
        except DeviceDisallowedError as exc:
            return self.completion.fail(rec, "device_disallowed", str(exc))
        cert = issued.record
        self.ctx.publish(
            "CertificateIssued",
            rec.device_id,
            f"{rec.request_id}/issued",
            requestId=rec.request_id,
            serial=cert.serial,
            thumbprint=cert.thumbprint_sha256,
            notAfter=iso(cert.not_after),
            reason=rec.reason,
        )
        # issue, enroll, deliver and the reprovision call need no device round trip and
        # each is idempotent: one write at the end of all of them (a crash before it leaves
        # csr_received; re-driving reuses the certificate, finds it enrolled, delivers the
        # same patch again)
        issued_rec = transitions.apply(rec, transitions.issued(cert.serial, cert.thumbprint_sha256))
        return self.enroll(issued_rec, cert, defer_reprovision=defer_reprovision)

    def enroll(
        self,
        rec: RotationRecord,
        cert: CertificateRecord | None = None,
        *,
        defer_reprovision: bool,
    ) -> RotationRecord:
        """issued: the new certificate into DPS and the hub beside the current one."""
        ctx = self.ctx
        if rec.new_serial is None or rec.new_thumbprint is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no new certificate")
        if cert is None or cert.serial != rec.new_serial:
            cert = ctx.call(ctx.deps.ledger.get, rec.new_serial)
        refusal = slot_refusal(cert, rec.device_id, rec, ctx.now())
        if refusal is not None:  # the slot rule (admissible.py): nothing is written
            return self.completion.fail(
                rec, refusal, f"certificate {cert.serial} may not be enrolled ({refusal})"
            )
        reason = trigger_of(rec.reason)
        clear_old = reason in (Trigger.COMPROMISE, Trigger.ALLOW)
        enable = reason is Trigger.ALLOW
        slot = place_in_enrollment(
            ctx,
            rec.device_id,
            cert,
            keep=rec.current_thumbprint,
            clear_old=clear_old,
            enable=enable,
            known_first=not enable,  # allow: the enrollment as it is now
        )
        if hub_write_before_delivery(rec):  # DPS registration writes it (economy.py)
            hub_accept(
                ctx,
                rec.device_id,
                rec.new_thumbprint,
                keep=rec.current_thumbprint,
                clear_others=enable,
                enable=enable,
            )
        ctx.audit(
            "slot_write",
            "ok",
            rec.device_id,
            request_id=rec.request_id,
            slot=slot,
            thumbprint=rec.new_thumbprint,
            oldRemoved=clear_old,
        )
        enrolled = transitions.apply(rec, transitions.enrolled(slot))
        return self.deliver(enrolled, defer_reprovision=defer_reprovision)

    def deliver(self, rec: RotationRecord, *, defer_reprovision: bool) -> RotationRecord:
        """enrolled: the certificate into the desired twin, then the reprovision call
        (unless a bulk job makes it for the whole batch)."""
        ctx = self.ctx
        issued = ctx.issue(rec)
        patch = {
            "x509": {
                "renewal": renewal_request(ctx, rec),
                "issued": {
                    "requestId": rec.request_id,
                    "certificate": leaf_chain_list(issued),
                    "notAfter": format_time(issued.record.not_after),
                },
            }
        }
        ctx.call(ctx.deps.registry.patch_desired, rec.device_id, patch)
        delivered = transitions.apply(rec, transitions.delivered(ctx.now()))
        if defer_reprovision:
            return ctx.uow.save(delivered)
        return self.reprovision(delivered)

    def reprovision(self, rec: RotationRecord) -> RotationRecord:
        """delivered: call ``reprovision`` on the device; offline: back off and wait."""
        ctx = self.ctx
        now = ctx.now()
        error: str
        try:
            result = ctx.call(
                ctx.deps.registry.invoke_method,
                rec.device_id,
                REPROVISION_METHOD,
                {"requestId": rec.request_id},
            )
        except DeviceOfflineError as exc:
            error = f"device offline: {exc}"
        else:
            if 200 <= result.status < 300:
                deadline = now + ctx.policy.confirm_timeout
                return ctx.uow.save(rec, transitions.reprovision_sent(rec, deadline))
            error = f"reprovision answered {result.status}"
        delay = backoff(
            rec.attempts + 1,
            base=ctx.policy.offline_backoff_base,
            cap=ctx.policy.offline_backoff_cap,
            key=rec.device_id,
        )
        logger.info(
            "device %s request %s: %s; next try in %s", rec.device_id, rec.request_id, error, delay
        )
        ctx.metric("certroll.device_offline")
        return ctx.uow.save(rec, transitions.reprovision_missed(rec, now + delay, error))
