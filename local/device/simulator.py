"""A fleet of reference device agents in one process, for demos, benchmarks and e2e tests.

:class:`FleetSimulator` provisions N devices (EC P-256 keys made here, initial
certificates from an :class:`~shared.ports.IssuingAuthority` or from an injected
``issue_initial(device_id, csr_pem) -> chain_pem`` callable so certroll's own issuer can
record them), enrolls them in the emulator (individual enrollments, or membership in one
CA enrollment group), registers and connects them, and then steps them in rounds.

Stepping is event driven: an agent is stepped in a round only when the hub called it
(desired patch, direct method) since the last round or when a time it asked for (a slow
answer, a retry, the end of an offline period) has come. A round costs O(pending work),
not O(fleet), and there are no threads per device.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from local.device import contract
from local.device.agent import DeviceAgent, FleetLike
from shared.domain.errors import ThrottledError
from shared.domain.model import CertificateSlot, EnrollmentGroup, IndividualEnrollment
from shared.pki.profile import DEVICE_BASIC_CONSTRAINTS, DEVICE_EKU, DEVICE_KEY_USAGE
from shared.ports import IssuingAuthority

logger = logging.getLogger(__name__)

LIFECYCLE = "lifecycle"  # the emulator's Event Grid lifecycle topic

IssueInitial = Callable[[str, str], str]
"""``issue_initial(device_id, csr_pem) -> chain PEM (leaf first)``."""

_MAX_THROTTLE_WAITS = 100_000


class EnrollmentsLike(Protocol):
    def put_individual(self, enrollment: IndividualEnrollment) -> IndividualEnrollment: ...

    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup: ...


class EventsLike(Protocol):
    def subscribe(self, topic: str, callback: Callable[[dict[str, Any]], None]) -> None: ...


class SimulatedFleetLike(FleetLike, Protocol):
    """The emulator as the simulator uses it: device side, DPS service side, events."""

    @property
    def dps(self) -> EnrollmentsLike: ...

    @property
    def events(self) -> EventsLike: ...


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    connected: int
    offline: int
    renewals_installed: int
    renewals_failed: int
    csrs_made: int
    self_reprovisions: int
    connect_failures: int
    max_gap_seconds: float
    devices_with_gap: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FleetSimulator:
    """N simulated devices against one fleet emulator."""

    def __init__(
        self,
        emulator: SimulatedFleetLike,
        authority_or_issue_fn: IssuingAuthority | IssueInitial,
        n_devices: int,
        *,
        group_fraction: float = 0.0,
        offline_fraction: float = 0.0,
        offline_for: timedelta = timedelta(hours=1),
        slow_fraction: float = 0.0,
        slow_delay: timedelta = timedelta(minutes=10),
        seed: int = 0,
        trust_anchor: x509.Certificate | None = None,
        initial_validity: timedelta = timedelta(days=30),
        initial_age: timedelta = timedelta(0),
        id_prefix: str = "sim-",
        group_id: str = "certroll-sim-fleet",
        group_ca: x509.Certificate | None = None,
        key_algorithm: str = contract.DEFAULT_KEY_ALGORITHM,
    ) -> None:
        if n_devices < 0:
            raise ValueError("n_devices must not be negative")
        for name, fraction in (
            ("group_fraction", group_fraction),
            ("offline_fraction", offline_fraction),
            ("slow_fraction", slow_fraction),
        ):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {fraction}")
        if initial_validity <= initial_age:
            raise ValueError("initial_validity must exceed initial_age ")
        self.emulator = emulator
        self.clock = emulator.clock
        self.n_devices = n_devices
        self.offline_for = offline_for
        self.slow_delay = slow_delay
        self.initial_validity = initial_validity
        self.initial_age = initial_age
        self.group_id = group_id
        self.key_algorithm = key_algorithm
        if isinstance(authority_or_issue_fn, IssuingAuthority):
            self.authority: IssuingAuthority | None = authority_or_issue_fn
            self.issue_initial: IssueInitial | None = None
            anchor = trust_anchor or authority_or_issue_fn.root or authority_or_issue_fn.chain[-1]
            self.trust_anchor: x509.Certificate | None = anchor
            self.group_ca: x509.Certificate | None = group_ca or authority_or_issue_fn.certificate
        else:
            self.authority = None
            self.issue_initial = authority_or_issue_fn
            self.trust_anchor = trust_anchor
            self.group_ca = group_ca  # learnt from the first issued chain when None

        rng = random.Random(seed)
        width = max(len(str(n_devices - 1)), 5) if n_devices else 5
        self.device_ids = [f"{id_prefix}{i:0{width}d}" for i in range(n_devices)]
        self.group_members = set(rng.sample(self.device_ids, round(group_fraction * n_devices)))
        self.offline_devices = set(rng.sample(self.device_ids, round(offline_fraction * n_devices)))
        self.slow_devices = set(rng.sample(self.device_ids, round(slow_fraction * n_devices)))

        self.agents: dict[str, DeviceAgent] = {}
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        #: the devices that installed a renewal in the last :meth:`step_all` (an agent
        #: installs only while it is stepped)
        self.last_installed: set[str] = set()
        self._heap: list[tuple[datetime, int, str, str]] = []  # (when, seq, kind, device id)
        self._scheduled: dict[str, datetime] = {}
        self._seq = 0
        self._started = False
        # a link the hub drops (identity disabled or changed, another connection) wakes the
        # device so it notices in the next round, as a real device notices a closed socket
        emulator.events.subscribe(LIFECYCLE, self._on_lifecycle)

    # ----------------------------------------------------------------- provisioning

    def provision(self) -> None:
        """Keys, initial certificates and enrollments for every device (no connection yet)."""
        if self.agents:
            return
        group_created = False
        for device_id in self.device_ids:
            key = ec.generate_private_key(ec.SECP256R1())
            chain = self._initial_chain(device_id, key)
            if self.trust_anchor is None:
                self.trust_anchor = chain[-1]
            if self.group_ca is None and len(chain) > 1:
                self.group_ca = chain[1]
            if device_id in self.group_members:
                if not group_created:
                    self._create_group()
                    group_created = True
            else:
                pem = chain[0].public_bytes(Encoding.PEM).decode()
                enrollment = IndividualEnrollment(
                    registration_id=device_id,
                    device_id=device_id,
                    primary=CertificateSlot(pem=pem),
                )
                self._put_individual(enrollment)
            self.agents[device_id] = DeviceAgent(
                device_id,
                self.emulator,
                key,
                chain,
                self.trust_anchor,
                key_algorithm=self.key_algorithm,
                answer_delay=self.slow_delay if device_id in self.slow_devices else timedelta(0),
                on_work=self._on_work,
            )
        logger.info(
            "provisioned %d devices (%d in group %s)",
            len(self.agents),
            len(self.group_members),
            self.group_id,
        )

    def _initial_chain(
        self, device_id: str, key: ec.EllipticCurvePrivateKey
    ) -> list[x509.Certificate]:
        if self.authority is not None:
            return self._sign_initial(device_id, key, self.authority)
        assert self.issue_initial is not None
        csr_pem = contract.build_csr(device_id, key).public_bytes(Encoding.PEM).decode()
        chain_pem = self.issue_initial(device_id, csr_pem)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem.encode())
        except ValueError as exc:
            raise ValueError(f"issue_initial returned no PEM chain for {device_id}: {exc}") from exc
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        leaf_spki = (
            chain[0].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        if leaf_spki != spki:
            raise ValueError(f"issue_initial returned a certificate for another key ({device_id})")
        return chain

    def _sign_initial(
        self, device_id: str, key: ec.EllipticCurvePrivateKey, authority: IssuingAuthority
    ) -> list[x509.Certificate]:
        """A device leaf signed directly with the authority's key (validity chosen here, so a
        fleet can start near expiry)."""
        not_before = self.clock.now() - self.initial_age
        issuer_key = authority.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(authority.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + self.initial_validity)
            .add_extension(DEVICE_BASIC_CONSTRAINTS, critical=True)
            .add_extension(DEVICE_KEY_USAGE, critical=True)
            .add_extension(DEVICE_EKU, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    authority.certificate.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )
        if authority.crl_url:
            builder = builder.add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(authority.crl_url)],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
                critical=False,
            )
        leaf = builder.sign(issuer_key, hashes.SHA256())
        return [leaf, *authority.chain]

    def _put_individual(self, enrollment: IndividualEnrollment) -> None:
        self._retrying(lambda: self.emulator.dps.put_individual(enrollment))

    def _create_group(self) -> None:
        if self.group_ca is None:
            raise ValueError("group members need a group CA: pass group_ca=")
        pem = self.group_ca.public_bytes(Encoding.PEM).decode()
        group = EnrollmentGroup(group_id=self.group_id, primary=CertificateSlot(pem=pem))
        self._retrying(lambda: self.emulator.dps.put_group(group))

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Set-up calls wait out throttling on the emulator's clock."""
        for _ in range(_MAX_THROTTLE_WAITS):
            try:
                return call()
            except ThrottledError as exc:
                self.clock.sleep(max(exc.retry_after, 0.001))
        raise ThrottledError("still throttled after many waits")

    # ----------------------------------------------------------------- running

    def start(self, *, wait: bool = True, max_rounds: int = 100_000) -> int:
        """Provision if needed, then first boot of every device: register and connect.

        With ``wait`` the clock is slept (a ManualClock advances) until every device is
        connected or ``max_rounds`` passed, as DPS throttles registrations at 1,000/min.
        Devices chosen to be offline then go offline for ``offline_for``. Returns the
        number of connected devices.
        """
        self.provision()
        self._started = True
        for device_id, agent in self.agents.items():
            agent.start()
            self._schedule(device_id, agent.next_due())
        if wait:
            self.settle(max_rounds=max_rounds, until=lambda: not self._not_connected())
        if self.offline_devices:
            self.take_offline(sorted(self.offline_devices), self.offline_for)
        return sum(1 for a in self.agents.values() if a.connected)

    def _not_connected(self) -> bool:
        return any(not a.connected for a in self.agents.values())

    def take_offline(self, device_ids: Iterable[str], duration: timedelta) -> None:
        """Power the devices off now; each comes back after ``duration`` of clock time."""
        back = self.clock.now() + duration
        for device_id in device_ids:
            self.agents[device_id].go_offline()
            self._push(back, "online", device_id)

    def step_all(self) -> int:
        """One round: bring back devices whose offline time is over, then step every device
        with work (new hub input or a due time). Returns how many devices were stepped."""
        now = self.clock.now()
        due: set[str] = set()
        while self._heap and self._heap[0][0] <= now:
            when, _, kind, device_id = heapq.heappop(self._heap)
            if kind == "online":
                self.agents[device_id].go_online()
                due.add(device_id)
            elif self._scheduled.get(device_id) == when:
                del self._scheduled[device_id]
                due.add(device_id)
        with self._lock:
            due |= self._dirty
            self._dirty = set()
        installed: set[str] = set()
        for device_id in sorted(due):
            agent = self.agents[device_id]
            before = agent.timeline.renewals_installed
            self._schedule(device_id, agent.step())
            if agent.timeline.renewals_installed > before:
                installed.add(device_id)
        self.last_installed = installed
        return len(due)

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Rounds of :meth:`step_all` until one steps nothing; returns the rounds run."""
        for rounds in range(1, max_rounds + 1):
            if self.step_all() == 0:
                return rounds
        return max_rounds

    def settle(
        self,
        *,
        max_rounds: int = 100_000,
        max_wait: timedelta | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Step rounds, sleeping the clock to the next due time whenever a round has nothing
        left to do now, until ``until()`` holds or nothing is due (or ``max_wait`` of clock
        time or ``max_rounds`` passed). Returns the rounds run."""
        deadline = self.clock.now() + max_wait if max_wait is not None else None
        for rounds in range(1, max_rounds + 1):
            if until is not None and until():
                return rounds - 1
            if self.step_all():
                continue
            due = self.next_due()
            if due is None or (deadline is not None and due > deadline):
                return rounds
            wait = (due - self.clock.now()).total_seconds()
            if wait > 0:
                self.clock.sleep(wait)
        return max_rounds

    def next_due(self) -> datetime | None:
        """The earliest clock time at which some device wants a step (None: nothing timed)."""
        while self._heap:
            when, _, kind, device_id = self._heap[0]
            if kind == "online" or self._scheduled.get(device_id) == when:
                return when
            heapq.heappop(self._heap)
        return None

    # ----------------------------------------------------------------- reporting

    def summary(self) -> FleetSummary:
        now = self.clock.now()
        gaps = [a.timeline.gap_seconds(now) for a in self.agents.values()]
        return FleetSummary(
            devices=len(self.agents),
            connected=sum(1 for a in self.agents.values() if a.connected),
            offline=sum(1 for a in self.agents.values() if a.offline),
            renewals_installed=sum(a.timeline.renewals_installed for a in self.agents.values()),
            renewals_failed=sum(a.timeline.renewals_failed for a in self.agents.values()),
            csrs_made=sum(a.timeline.csrs_made for a in self.agents.values()),
            self_reprovisions=sum(a.timeline.self_reprovisions for a in self.agents.values()),
            connect_failures=sum(a.timeline.connect_failures for a in self.agents.values()),
            max_gap_seconds=max(gaps, default=0.0),
            devices_with_gap=sum(1 for g in gaps if g > 0),
        )

    # ----------------------------------------------------------------- internals

    def _on_lifecycle(self, event: dict[str, Any]) -> None:
        if event.get("eventType") != "Microsoft.Devices.DeviceDisconnected":
            return
        device_id = event.get("data", {}).get("deviceId")
        agent = self.agents.get(device_id) if isinstance(device_id, str) else None
        if agent is not None and not agent.offline:
            with self._lock:
                self._dirty.add(device_id)

    def _on_work(self, agent: DeviceAgent) -> None:
        with self._lock:
            self._dirty.add(agent.device_id)

    def _schedule(self, device_id: str, when: datetime | None) -> None:
        if when is None:
            self._scheduled.pop(device_id, None)
            return
        current = self._scheduled.get(device_id)
        if current is not None and current <= when and current > self.clock.now():
            return
        self._scheduled[device_id] = when
        self._push(when, "step", device_id)

    def _push(self, when: datetime, kind: str, device_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, device_id))
