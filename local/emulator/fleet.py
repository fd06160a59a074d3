"""The fleet emulator: DPS and IoT Hub semantics in process, on an injectable clock.

Service side: ``emulator.dps`` (an :class:`~shared.ports.EnrollmentStore`) and
``emulator.hub`` (a :class:`~shared.ports.DeviceRegistry`). Device side:
:meth:`FleetEmulator.register` (DPS device registration with an X.509 chain) and
:meth:`FleetEmulator.connect` (hub connection with an X.509 chain). Events on
``emulator.events`` (topics ``lifecycle``, ``twin_changes``, ``connections``).
See docs/emulator.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cryptography import x509

from local.emulator import events as topics
from local.emulator import limits
from local.emulator.certificates import EmulatedCaCertificates
from local.emulator.core import (
    Core,
    DeviceHandler,
    DeviceSession,
    EnrollmentRecord,
    HubConnectError,
    Post,
    RegistrationError,
    RegistrationResult,
    iso,
)
from local.emulator.dps import EmulatedDps
from local.emulator.events import EventBus
from local.emulator.hub import EmulatedHub
from local.emulator.store import (
    DeviceRecord,
    StoredCert,
    chains_to,
    common_name,
    is_valid_at,
    new_etag,
)
from shared.clock import SystemClock
from shared.domain.certs import sha1_thumbprint, sha256_thumbprint
from shared.domain.errors import InvalidRequestError, ThrottledError
from shared.domain.model import ProvisioningStatus, RegistrationState
from shared.ports import Clock

logger = logging.getLogger(__name__)

__all__ = [
    "DeviceHandler",
    "DeviceSession",
    "EventBus",
    "FleetEmulator",
    "HubConnectError",
    "RegistrationError",
    "RegistrationResult",
]

# DPS error codes the emulator answers a device with
DPS_UNAUTHORIZED = 401002
DPS_DISABLED = 403001  # the emulator's code for "enrollment disabled" (status "disabled")
DPS_THROTTLED = 429001
# IoT Hub connect error codes
HUB_UNAUTHORIZED = 401003
HUB_DEVICE_DISABLED = 403012
HUB_THROTTLED = 429001

_X509_AUTH_TYPE = json.dumps(
    {
        "scope": "device",
        "type": "x509Certificate",
        "issuer": "external",
        "acceptingIpFilterRule": None,
    },
    separators=(",", ":"),
)


def _check_chain(chain: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    if isinstance(chain, x509.Certificate):
        raise InvalidRequestError("chain_invalid", "pass the chain as a sequence, leaf first")
    certs = tuple(chain)
    if not certs or not all(isinstance(c, x509.Certificate) for c in certs):
        raise InvalidRequestError(
            "chain_invalid", "the chain must be one or more x509.Certificate, leaf first"
        )
    return certs


class FleetEmulator:
    """DPS + IoT Hub for one local fleet."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        hub_host: str = "certroll-hub.azure-devices.net",
        id_scope: str = "0ne00C0FFEE",
        tier: str = "S1",
        units: int = 1,
        enforce_limits: bool = True,
        is_revoked: Callable[[x509.Certificate], bool] | None = None,
        coalesce_twin_changes: bool = False,
        connection_events: str = "immediate",
        limits_override: dict[str, float] | None = None,
        dps_bulk_counts: str = "call",
    ) -> None:
        if connection_events not in ("immediate", "snapshot"):
            raise ValueError("connection_events must be 'immediate' or 'snapshot'")
        self.clock: Clock = clock or SystemClock()
        self.events = EventBus()
        self.tier = tier.upper()
        self.units = units
        self.limiter = limits.Limiter(
            self.clock,
            tier,
            units,
            enabled=enforce_limits,
            overrides=limits_override,
            dps_bulk_counts=dps_bulk_counts,
        )
        self._core = Core(
            clock=self.clock,
            limiter=self.limiter,
            bus=self.events,
            hub_host=hub_host,
            id_scope=id_scope,
            is_revoked=is_revoked,
            coalesce=coalesce_twin_changes,
            connection_events=connection_events,
        )
        self.dps = EmulatedDps(self._core)
        self.hub = EmulatedHub(self._core)
        #: the services' CA certificates with proof of possession (certificates.py)
        self.dps_certificates = EmulatedCaCertificates(self._core, "dps")
        self.hub_certificates = EmulatedCaCertificates(self._core, "hub")

    @property
    def hub_host(self) -> str:
        return self._core.hub_host

    @property
    def hub_name(self) -> str:
        return self._core.hub_name

    @property
    def id_scope(self) -> str:
        return self._core.id_scope

    # -- CA certificates ---------------------------------------------------------------

    def add_verified_ca(self, name: str, certificate: x509.Certificate) -> None:
        """Upload and verify a CA certificate in DPS (for groups' caReferences) and in the
        hub (for certificateAuthority identities)."""
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("ca_name_invalid", "the CA name must be a non-empty string")
        if not isinstance(certificate, x509.Certificate):
            raise InvalidRequestError("certificate_invalid", "expected an x509.Certificate")
        with self._core.txn():
            self._core.verified_cas[name] = StoredCert(certificate)

    # -- DPS device API -----------------------------------------------------------------

    def register(
        self, registration_id: str, chain: Sequence[x509.Certificate]
    ) -> RegistrationResult:
        """Register through DPS with an X.509 chain (leaf first)."""
        certs = _check_chain(chain)
        self._core.run_due_jobs()
        with self._core.txn() as post:
            try:
                self.limiter.take(limits.DPS_REGISTRATIONS)
            except ThrottledError as exc:
                raise RegistrationError(
                    429, DPS_THROTTLED, str(exc), retry_after=exc.retry_after
                ) from exc
            leaf = certs[0]
            if common_name(leaf) != registration_id:
                raise RegistrationError(
                    401,
                    DPS_UNAUTHORIZED,
                    f"the certificate's CN {common_name(leaf)!r} is not the registration id "
                    f"{registration_id!r}",
                )
            enrollment, device_id, migrate = self._attest(registration_id, certs)
            return self._assign(post, registration_id, device_id, leaf, enrollment, migrate)

    def _attest(
        self, registration_id: str, certs: tuple[x509.Certificate, ...]
    ) -> tuple[str, str, bool]:
        """Which enrollment admits ``certs``: (enrollment, device id, migrate data)."""
        core = self._core
        now = core.now()
        leaf = certs[0]
        leaf_sha256 = sha256_thumbprint(leaf)
        if not is_valid_at(leaf, now):
            raise RegistrationError(
                401, DPS_UNAUTHORIZED, f"the certificate is not valid at {iso(now)}"
            )
        if core.is_revoked is not None and core.is_revoked(leaf):
            raise RegistrationError(401, DPS_UNAUTHORIZED, "the certificate is revoked")
        # individual enrollments first: one for this registration id decides alone
        ind = core.individuals.get(registration_id)
        if ind is not None:
            slots = [s for s in (ind.primary, ind.secondary) if s is not None]
            if not any(s.sha256 == leaf_sha256 for s in slots):
                raise RegistrationError(
                    401,
                    DPS_UNAUTHORIZED,
                    f"certificate {leaf_sha256} is in neither slot of the individual "
                    f"enrollment {registration_id}",
                )
            if ind.view.provisioning_status != ProvisioningStatus.ENABLED:
                raise RegistrationError(
                    403,
                    DPS_DISABLED,
                    f"the individual enrollment {registration_id} is disabled",
                    registration_status="disabled",
                )
            view = ind.view
            return (
                f"individual:{registration_id}",
                view.device_id or registration_id,
                bool(view.reprovision_migrate_data),
            )
        for gid, grp in core.groups.items():
            if self._group_admits(grp, certs, now):
                if grp.view.provisioning_status != ProvisioningStatus.ENABLED:
                    raise RegistrationError(
                        403,
                        DPS_DISABLED,
                        f"the enrollment group {gid} is disabled",
                        registration_status="disabled",
                    )
                return f"group:{gid}", registration_id, bool(grp.view.reprovision_migrate_data)
        raise RegistrationError(
            401, DPS_UNAUTHORIZED, f"no enrollment admits certificate {leaf_sha256}"
        )

    def _group_admits(
        self, grp: EnrollmentRecord, certs: tuple[x509.Certificate, ...], now: Any
    ) -> bool:
        anchors = [s.cert for s in (grp.primary, grp.secondary) if s is not None]
        for ref in (grp.view.ca_primary, grp.view.ca_secondary):
            ca = self._core.verified_ca("dps", ref) if ref else None
            if ca is not None:
                anchors.append(ca.cert)
        return chains_to(certs, anchors, now) is not None

    def _assign(
        self,
        post: Post,
        registration_id: str,
        device_id: str,
        leaf: x509.Certificate,
        enrollment: str,
        migrate: bool,
    ) -> RegistrationResult:
        """Create or update the hub identity and the registration state (lock held)."""
        core = self._core
        now = core.now()
        thumbprint = sha256_thumbprint(leaf)
        d = core.devices.get(device_id)
        previous = core.registrations.get(registration_id)
        if d is None:
            d = core.add_device(device_id)
            d.auth_type = "selfSigned"
            d.primary_tp = thumbprint
            core.emit(
                post,
                topics.LIFECYCLE,
                core.lifecycle_event("DeviceCreated", d, {"twin": core.twin_json(d)}),
            )
            substatus = "initialAssignment"
        else:
            d.auth_type = "selfSigned"
            d.primary_tp = thumbprint
            d.secondary_tp = None
            d.etag = new_etag()
            if previous is None:
                substatus = "initialAssignment"
            elif migrate:
                substatus = "reprovisionedToInitialAssignment"
            else:
                self._reset_twin(d)
                substatus = "deviceDataReset"
        etag = new_etag()
        state = RegistrationState(
            registration_id=registration_id,
            status="assigned",
            assigned_hub=core.hub_host,
            device_id=device_id,
            last_updated=now,
            etag=etag,
        )
        core.registrations[registration_id] = state
        core.registration_sources[registration_id] = enrollment
        logger.info(
            "registered %s as device %s via %s (%s)",
            registration_id,
            device_id,
            enrollment,
            substatus,
        )
        return RegistrationResult(
            registration_id=registration_id,
            status="assigned",
            assigned_hub=core.hub_host,
            device_id=device_id,
            substatus=substatus,
            etag=etag,
            last_updated=now,
            enrollment=enrollment,
        )

    @staticmethod
    def _reset_twin(d: DeviceRecord) -> None:
        d.desired = None
        d.set_reported(None)
        d.tags = None
        d.desired_version += 1
        d.reported_version += 1
        d.version += 1

    # -- hub device connection ----------------------------------------------------------

    def connect(
        self, device_id: str, chain: Sequence[x509.Certificate], handler: DeviceHandler
    ) -> DeviceSession:
        """Open a device connection to the hub with an X.509 chain (leaf first).

        A failure raises HubConnectError and, for 401003/403012, appends a Connections
        resource-log record to topic ``connections``. A new connection replaces the
        device's previous one.
        """
        certs = _check_chain(chain)
        if not isinstance(device_id, str) or not device_id:
            raise InvalidRequestError("device_id_invalid", "the device id must be a string")
        self._core.run_due_jobs()
        with self._core.txn() as post:
            try:
                self.limiter.take(limits.HUB_CONNECTIONS)
            except ThrottledError as exc:
                raise HubConnectError(HUB_THROTTLED, str(exc), retry_after=exc.retry_after) from exc
            core = self._core
            now = core.now()
            leaf = certs[0]
            d = core.devices.get(device_id)
            sha256 = sha256_thumbprint(leaf)
            if d is None:
                self._refuse(post, device_id, HUB_UNAUTHORIZED, leaf, "device not registered")
            elif d.status != "enabled":
                self._refuse(post, device_id, HUB_DEVICE_DISABLED, leaf, "device is disabled")
            elif d.auth_type == "selfSigned":
                sha1 = sha1_thumbprint(leaf)
                known = {t for t in (d.primary_tp, d.secondary_tp) if t}
                if not (known & {sha256, sha1}):
                    self._refuse(
                        post,
                        device_id,
                        HUB_UNAUTHORIZED,
                        leaf,
                        "thumbprint matches neither primary nor secondary",
                        expected=(d.primary_tp, d.secondary_tp),
                    )
                elif not is_valid_at(leaf, now):
                    self._refuse(post, device_id, HUB_UNAUTHORIZED, leaf, "certificate expired")
            else:
                anchors = core.verified_anchors("hub")
                if common_name(leaf) != device_id or chains_to(certs, anchors, now) is None:
                    self._refuse(
                        post,
                        device_id,
                        HUB_UNAUTHORIZED,
                        leaf,
                        "certificate does not chain to a verified CA",
                    )
            assert d is not None  # every refusal above raised
            core.drop_session(post, d)
            session = DeviceSession(core, device_id, handler, sha256)
            d.session = session
            d.connection_state = "Connected"
            core.connection_event(post, "DeviceConnected", d)
            return session

    def _refuse(
        self,
        post: Post,
        device_id: str,
        code: int,
        leaf: x509.Certificate,
        reason: str,
        expected: tuple[str | None, str | None] | None = None,
    ) -> None:
        """Record a Connections-log failure and raise HubConnectError (lock held).

        The record holds only what Microsoft documents for the Connections category
        (``articles/iot-hub/monitor-iot-hub-reference.md``; ``resultType`` and
        ``resultDescription`` on errors, ``iot-hub-troubleshoot-connectivity.md``): no
        field names the presented certificate. Why it was refused stays in the
        HubConnectError the device gets (as the hub tells the device, not the log).
        """
        core = self._core
        sha256 = sha256_thumbprint(leaf)
        description = "IoTHubUnauthorized" if code == HUB_UNAUTHORIZED else "DeviceDisabled"
        detail = f"{reason}; presented certificate thumbprint {sha256.upper()}"
        if expected is not None:
            detail += (
                f"; identity thumbprints primary {(expected[0] or '-').upper()} "
                f"secondary {(expected[1] or '-').upper()}"
            )
        properties = {
            "deviceId": device_id,
            "sdkVersion": "certroll-emulator",
            "protocol": "Mqtt",
            "authType": _X509_AUTH_TYPE,
            "maskedIpAddress": "127.0.0.XXX",
        }
        record = {
            "records": [
                {
                    "time": iso(core.now()),
                    "resourceId": core.hub_resource_id,
                    "operationName": "deviceConnect",
                    "category": "Connections",
                    "level": "Error",
                    "resultType": str(code),
                    "resultDescription": description,
                    "properties": json.dumps(properties, separators=(",", ":")),
                    "location": "local",
                }
            ]
        }
        core.emit(post, topics.CONNECTIONS, record)
        logger.info("refused connection of %s: %s %s", device_id, code, reason)
        raise HubConnectError(code, f"{description}: {detail}")

    # -- misc ---------------------------------------------------------------------------

    def run_due_jobs(self) -> int:
        """Run the due work of scheduled method jobs now; returns device calls made."""
        return self._core.run_due_jobs()

    def session(self, device_id: str) -> DeviceSession | None:
        """The device's current session, if connected."""
        with self._core.txn():
            d = self._core.devices.get(device_id)
            return d.session if d is not None else None

    def bulk_load(self, rows: Iterable[tuple[str, str | None, dict[str, Any] | None]]) -> int:
        """Add hub devices directly (see :meth:`EmulatedHub.bulk_load`)."""
        return self.hub.bulk_load(rows)

    def __len__(self) -> int:
        return len(self._core.devices)
