"""The steps that move the fleet: ``trust`` (the new CA beside the old one in the groups,
issuance under it) and ``reissue`` (a campaign for the devices still on the old CA)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from shared.domain.ca_roll import CaRollRecord, CaStatus, RollMode, RollState, RollStep, check_step
from shared.domain.campaign import Campaign
from shared.domain.messages import format_time
from shared.domain.model import CertificateStatus, Trigger, Twin
from shared.pki.ca_roll.base import RollResult, _campaign_detail, _required, _thumb
from shared.pki.ca_roll.new_ca import _NewCaSteps

logger = logging.getLogger(__name__)


class _SwitchSteps(_NewCaSteps):
    """``trust`` and ``reissue``, and the devices left on the old CA."""

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

    def campaign(self, record: CaRollRecord | None = None) -> Campaign | None:
        rec = record or self.status()
        if not rec.campaign_ids:
            return None
        return self.deps.campaigns.status(rec.campaign_ids[-1])
