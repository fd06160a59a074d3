"""The issuing CA's roll: its record, its steps' order, and the ports it needs.

A CA roll moves the fleet from the issuing CA in use (the *old* CA) to a new one, in
steps that an operator (``certroll ca roll <step>``), the HTTP API (``POST
/api/ca/roll/{step}``) or the functions run one at a time::

    idle ──prepare──► prepared ──install──► certified ──verify──► verified
      ▲                (new key, CSR)        (root signed)        (DPS + hub PoP)
      │                                                               │ trust
      │                                                               ▼
      └──────retire────── reissuing ◄──────reissue────────────── trusted
        (new CA primary,  (campaign, reason    (new CA in the groups' secondary
         old CA gone,      ca-roll/compromise)  slot; certroll issues under it)
         final CRL)

The record (:class:`CaRollRecord`) is one document, written with an ETag check by every
step (Table storage in Azure, Azurite locally), so each step is resumable after a crash
and a repeated step changes nothing. A step run in the wrong state raises
:class:`CaRollStepError` and changes nothing. The record also keeps the history of
every issuing CA certroll has used (:class:`CaEntry`), which is how the issuer knows
which CA is active and which older ones still publish a CRL.

Pure: no I/O here; the service that runs the steps is :mod:`shared.pki.ca_roll`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.domain.campaign import Campaign
from shared.domain.errors import ConflictError, InvalidRequestError
from shared.domain.model import Trigger


class RollState(StrEnum):
    IDLE = "idle"  # no roll running (the history may hold earlier ones)
    PREPARED = "prepared"  # the new key exists, its CSR waits for the offline root
    CERTIFIED = "certified"  # the root signed the new CA certificate
    VERIFIED = "verified"  # DPS and IoT Hub hold the new CA, proof of possession done
    TRUSTED = "trusted"  # the enrollment groups trust both CAs; certroll issues under the new
    REISSUING = "reissuing"  # a campaign re-issues every device still on the old CA


class RollStep(StrEnum):
    PREPARE = "prepare"
    INSTALL = "install"
    VERIFY = "verify"
    TRUST = "trust"
    REISSUE = "reissue"
    RETIRE = "retire"


class RollMode(StrEnum):
    NORMAL = "normal"  # both CAs trusted while the fleet moves; the old one leaves at the end
    COMPROMISE = "compromise"  # old CA out of the groups at once, urgent re-issue, root CRL


#: the state each step starts from, and the state it leaves the roll in
STEP_FROM: dict[RollStep, frozenset[RollState]] = {
    RollStep.PREPARE: frozenset({RollState.IDLE}),
    RollStep.INSTALL: frozenset({RollState.PREPARED}),
    RollStep.VERIFY: frozenset({RollState.CERTIFIED}),
    RollStep.TRUST: frozenset({RollState.VERIFIED}),
    RollStep.REISSUE: frozenset({RollState.TRUSTED, RollState.REISSUING}),
    RollStep.RETIRE: frozenset({RollState.REISSUING}),
}
STEP_TO: dict[RollStep, RollState] = {
    RollStep.PREPARE: RollState.PREPARED,
    RollStep.INSTALL: RollState.CERTIFIED,
    RollStep.VERIFY: RollState.VERIFIED,
    RollStep.TRUST: RollState.TRUSTED,
    RollStep.REISSUE: RollState.REISSUING,
    RollStep.RETIRE: RollState.IDLE,
}
#: the step that takes the roll out of each state
NEXT_STEP: dict[RollState, RollStep] = {
    RollState.IDLE: RollStep.PREPARE,
    RollState.PREPARED: RollStep.INSTALL,
    RollState.CERTIFIED: RollStep.VERIFY,
    RollState.VERIFIED: RollStep.TRUST,
    RollState.TRUSTED: RollStep.REISSUE,
    RollState.REISSUING: RollStep.RETIRE,
}


class CaStatus(StrEnum):
    PENDING = "pending"  # being rolled in: key (and later certificate), not yet issuing
    ACTIVE = "active"  # certroll issues device certificates under it
    RETIRING = "retiring"  # no longer issuing; trusted until the fleet has moved
    RETIRED = "retired"  # out of the groups; final CRL published; kept for the record
    REVOKED = "revoked"  # retired after a compromise and listed in the root CRL


#: CAs whose CRL certroll keeps publishing (their leaves may still be in use)
LIVE_STATUSES = frozenset({CaStatus.ACTIVE, CaStatus.RETIRING})


class CaRollStepError(ConflictError):
    """A CA-roll step was asked for in a state it cannot run from (nothing changed)."""

    code = "ca_roll_out_of_order"

    def __init__(self, step: RollStep, state: RollState) -> None:
        expected = ", ".join(sorted(s.value for s in STEP_FROM[step]))
        following = NEXT_STEP[state].value
        super().__init__(
            f"{self.code}: step {step.value} runs in state {expected}; the roll is in "
            f"{state.value} (next step: {following})"
        )
        self.step = step
        self.state = state
        self.message = str(self)


class CaRollIncompleteError(ConflictError):
    """Retiring the old CA was refused: devices still present a certificate it issued."""

    code = "ca_roll_incomplete"

    def __init__(self, remaining: int, sample: list[str]) -> None:
        shown = ", ".join(sample[:5]) + (" ..." if len(sample) > 5 else "")
        super().__init__(
            f"{self.code}: {remaining} device(s) still use a certificate of the old CA "
            f"({shown}); run `reissue` again or wait for the campaign, or retire with force"
        )
        self.remaining = remaining
        self.sample = sample
        self.message = str(self)


@dataclass
class CaEntry:
    """One issuing CA certroll has used or is rolling in."""

    ca_id: str  # "issuing-1", "issuing-2", ...
    generation: int
    key_backend: str  # file | pkcs11 | keyvault
    key_ref: str  # file path, PKCS#11 key label, or Key Vault key id with version
    key_id: str  # the signing key's id as the ledger records it (issuer_key_id)
    status: CaStatus
    crl_name: str  # blob name of its CRL in the PKI container (its leaves' CDP)
    cert_name: str  # blob name of its certificate in the PKI container
    service_name: str  # its name in DPS and IoT Hub certificates (caReferences)
    certificate_pem: str | None = None
    csr_pem: str | None = None
    created_at: datetime | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES and self.certificate_pem is not None


@dataclass
class CaRollRecord:
    """The CA roll in progress (if any) and the history of issuing CAs."""

    state: RollState = RollState.IDLE
    mode: RollMode = RollMode.NORMAL
    cas: list[CaEntry] = field(default_factory=list)
    active_ca_id: str | None = None  # None: the CA of the settings (no roll yet)
    old_ca_id: str | None = None  # the CA being rolled out
    new_ca_id: str | None = None  # the CA being rolled in
    switched_at: datetime | None = None  # when certroll began issuing under the new CA
    selection: str | None = None  # the twin query of the devices still on the old CA
    campaign_ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # enrollment groups that trust the CAs
    verified_in: list[str] = field(default_factory=list)  # "dps", "hub"
    rolls_completed: int = 0
    pending_key: str | None = None  # the name ``prepare`` reserved for the new key
    updated_at: datetime | None = None
    updated_by: str | None = None
    etag: str | None = None

    def entry(self, ca_id: str | None) -> CaEntry:
        for ca in self.cas:
            if ca.ca_id == ca_id:
                return ca
        raise InvalidRequestError("ca_unknown", f"the CA roll record holds no CA {ca_id!r}")

    @property
    def active(self) -> CaEntry | None:
        return self.entry(self.active_ca_id) if self.active_ca_id else None

    @property
    def old(self) -> CaEntry:
        return self.entry(self.old_ca_id)

    @property
    def new(self) -> CaEntry:
        return self.entry(self.new_ca_id)

    @property
    def next_step(self) -> RollStep:
        return NEXT_STEP[self.state]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("etag", None)
        out["next_step"] = self.next_step.value
        return json.loads(json.dumps(out, default=_json_default))  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- persistence

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("etag", None)
        return json.dumps(data, default=_json_default, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, etag: str | None = None) -> CaRollRecord:
        data = json.loads(text)
        cas = [
            CaEntry(
                **{
                    **ca,
                    "status": CaStatus(ca["status"]),
                    **{k: _dt(ca.get(k)) for k in ("created_at", "activated_at", "retired_at")},
                }
            )
            for ca in data.pop("cas", [])
        ]
        return cls(
            **{
                **data,
                "state": RollState(data["state"]),
                "mode": RollMode(data["mode"]),
                "cas": cas,
                "switched_at": _dt(data.get("switched_at")),
                "updated_at": _dt(data.get("updated_at")),
                "etag": etag,
            }
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def check_step(record: CaRollRecord, step: RollStep) -> None:
    """Raise :class:`CaRollStepError` unless ``step`` may run in the record's state."""
    if record.state not in STEP_FROM[step]:
        raise CaRollStepError(step, record.state)


def parse_step(value: object) -> RollStep:
    try:
        return RollStep(str(value))
    except ValueError:
        choices = ", ".join(s.value for s in RollStep)
        raise InvalidRequestError(
            "ca_roll_step_invalid", f"unknown CA-roll step {value!r}; use one of {choices}"
        ) from None


def parse_mode(value: object) -> RollMode:
    try:
        return RollMode(str(value))
    except ValueError:
        raise InvalidRequestError(
            "ca_roll_mode_invalid", f"unknown CA-roll mode {value!r}; use normal or compromise"
        ) from None


# --------------------------------------------------------------------------- ports


class CaRollStore(Protocol):
    """The one CA-roll record (Table storage in Azure), changed with ETag checks."""

    def get(self) -> CaRollRecord | None:
        """The record, None before the first roll."""

    def put(self, record: CaRollRecord) -> CaRollRecord:
        """Create (``etag`` None: ConflictError when present) or replace with If-Match
        (ConcurrencyError when someone wrote first); the record with its new ETag."""


@dataclass(frozen=True)
class CaCertificateInfo:
    """A CA certificate as DPS or IoT Hub holds it (ARM ``.../certificates/{name}``)."""

    name: str
    thumbprint_sha256: str
    subject: str
    verified: bool
    etag: str
    verification_code: str | None = None


class CaCertificateService(Protocol):
    """The CA certificates of one service, DPS or IoT Hub: upload, then proof of
    possession (a verification code, a certificate with ``CN=<code>`` signed by the CA's
    key, verify). Microsoft documents the same three calls for both services (ARM
    ``Microsoft.Devices/provisioningServices/certificates`` and
    ``Microsoft.Devices/IotHubs/certificates``: create or update, generateVerificationCode,
    verify)."""

    def get(self, name: str) -> CaCertificateInfo:
        """NotFoundError when absent."""

    def upload(self, name: str, certificate_pem: str, etag: str | None = None) -> CaCertificateInfo:
        """Create (``etag`` None) or replace (If-Match ``etag``) the certificate ``name``;
        it is unverified until :meth:`verify`. ``thumbprint_sha256`` of the answer may be
        the SHA-1 thumbprint where the service reports only that (ARM ``thumbprint``)."""

    def generate_verification_code(self, name: str, etag: str) -> CaCertificateInfo:
        """A fresh verification code (``verification_code``) for ``name``."""

    def verify(self, name: str, etag: str, verification_pem: str) -> CaCertificateInfo:
        """Submit the verification certificate; InvalidRequestError when it does not prove
        possession."""

    def delete(self, name: str, etag: str) -> None: ...


class CampaignRunner(Protocol):
    """What the CA roll needs of the campaign engine: re-issue every device a twin query
    selects, with a reason, and tell how far it got."""

    def start(self, selection: str, reason: Trigger, actor: str) -> str:
        """Start a campaign; its id."""

    def status(self, campaign_id: str) -> Campaign:
        """The campaign record (state, checkpoint counts)."""
