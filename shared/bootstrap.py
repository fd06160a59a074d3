"""The one place that wires settings to adapters.

Triggers and the CLI call :func:`get_services`; everything is built lazily on first
use and cached per worker process. Tests and the local dev host replace parts with
:func:`override_services` or by passing ready objects to :class:`Services` (a whole
:class:`StorageBundle` as ``storage=``, or single ports).

Storage comes as one :class:`StorageBundle`: :func:`memory_storage`, or
:func:`azure_storage` on service clients (:func:`storage_from_settings` builds those from
the settings with :mod:`shared.adapters.storage_clients`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509

from shared.clock import SystemClock
from shared.domain.model import DomainEvent
from shared.ports import (
    AuditLog,
    CampaignStore,
    CertificateLedger,
    Clock,
    CrlPublisher,
    DeviceRegistry,
    EnrollmentStore,
    EventSink,
    IssuingAuthority,
    RotationStateStore,
    TokenValidator,
    WorkQueue,
)
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    from shared.adapters.otel import Instrumentation
    from shared.domain.auth import OperatorAuthenticator
    from shared.domain.ca_roll import CaCertificateService, CampaignRunner, CaRollStore
    from shared.domain.campaign_engine import CampaignService, CampaignTracker
    from shared.domain.campaign_enrollments import EnrollmentPass
    from shared.domain.rotation import RotationService
    from shared.pki.ca_roll import CaRoll, CaSet, RollingIssuer

logger = logging.getLogger(__name__)

CRL_NAME = "crl/issuing.crl"


class LoggingEventSink(EventSink):
    """Used when no Event Grid topic is configured: events go to the log only."""

    def publish(self, events: list[DomainEvent]) -> None:
        for event in events:
            logger.info("event %s %s %s", event.event_type, event.subject, event.data)


@dataclass(frozen=True)
class StorageBundle:
    """The storage-backed ports, built together: in memory, or on one storage account."""

    ledger: CertificateLedger
    state: RotationStateStore
    audit: AuditLog
    crl_publisher: CrlPublisher
    queue: WorkQueue
    campaigns: CampaignStore | None = None  # None: in memory


def memory_storage() -> StorageBundle:
    """In-memory storage adapters (``CERTROLL_STORAGE=memory``: tests, demos)."""
    from shared.adapters import memory

    return StorageBundle(
        ledger=memory.MemoryLedger(),
        state=memory.MemoryRotationStore(),
        audit=memory.MemoryAuditLog(),
        crl_publisher=memory.MemoryCrlPublisher(),
        queue=memory.MemoryWorkQueue(),
        campaigns=memory.MemoryCampaignStore(),
    )


def azure_storage(
    settings: Settings,
    tables: TableServiceClient,
    blobs: BlobServiceClient,
    queues: QueueServiceClient,
) -> StorageBundle:
    """The Azure Storage adapters on these service clients, named by ``settings`` (table
    prefix, PKI container, CRL base URL, work queue)."""
    from shared.adapters.blob import BlobCrlPublisher
    from shared.adapters.campaigns import TableCampaignStore
    from shared.adapters.queues import StorageWorkQueue
    from shared.adapters.storage_clients import table_names
    from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore

    ledger_name, index_name, state_name, audit_name, campaigns_name = table_names(settings)
    return StorageBundle(
        ledger=TableLedger(tables, ledger_name, index_name),
        state=TableRotationStore(tables, state_name),
        audit=TableAuditLog(tables, audit_name),
        crl_publisher=BlobCrlPublisher(
            blobs,
            settings.get("CERTROLL_PKI_CONTAINER"),
            settings.get("CERTROLL_CRL_BASE_URL") or None,
        ),
        queue=StorageWorkQueue(queues, settings.get("CERTROLL_WORK_QUEUE")),
        campaigns=TableCampaignStore(tables, campaigns_name),
    )


def storage_from_settings(settings: Settings) -> StorageBundle:
    """The Azure Storage adapters on the account ``CERTROLL_STORAGE`` names."""
    from shared.adapters.storage_clients import service_clients

    return azure_storage(settings, *service_clients(settings))


class Services:
    """Lazily built adapters and services. Pass objects to replace the defaults."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or Settings.from_env()
        unknown = set(overrides) - _OVERRIDABLE
        if unknown:
            raise TypeError(f"unknown service overrides: {sorted(unknown)}")
        for name, value in overrides.items():
            self.__dict__[name] = value  # pre-fills the cached_property
        self._given = frozenset(overrides)

    # ----------------------------------------------------------------- storage
    @cached_property
    def storage(self) -> StorageBundle:
        """``CERTROLL_STORAGE=memory``: in-memory adapters; otherwise Azure Storage."""
        if self.settings.get("CERTROLL_STORAGE") == "memory":
            return memory_storage()
        return storage_from_settings(self.settings)

    @cached_property
    def clock(self) -> Clock:
        return SystemClock()

    @cached_property
    def ledger(self) -> CertificateLedger:
        ledger: CertificateLedger = self.storage.ledger
        return ledger

    @cached_property
    def state(self) -> RotationStateStore:
        state: RotationStateStore = self.storage.state
        return state

    @cached_property
    def audit(self) -> AuditLog:
        audit: AuditLog = self.storage.audit
        return audit

    @cached_property
    def crl_publisher(self) -> CrlPublisher:
        publisher: CrlPublisher = self.storage.crl_publisher
        return publisher

    @cached_property
    def queue(self) -> WorkQueue:
        queue: WorkQueue = self.storage.queue
        return queue

    @cached_property
    def campaigns(self) -> CampaignStore:
        store = self.storage.campaigns
        if store is None:
            from shared.adapters.memory import MemoryCampaignStore

            store = MemoryCampaignStore()
        return store

    # ----------------------------------------------------------------- PKI
    @cached_property
    def ca_rolls(self) -> CaRollStore:
        """The CA-roll record (docs/ca-roll.md): which issuing CA is active."""
        from shared.adapters.ca_roll_store import (
            MemoryCaRollStore,
            TableCaRollStore,
            ca_roll_table_name,
        )

        if self.settings.get("CERTROLL_STORAGE") == "memory" or isinstance(
            self.ledger, _memory_types()
        ):
            return MemoryCaRollStore()
        from shared.adapters.storage_clients import table_service

        return TableCaRollStore(table_service(self.settings), ca_roll_table_name(self.settings))

    @cached_property
    def ca_set(self) -> CaSet:
        """The active issuing CA and the older ones still publishing a CRL."""
        from shared.pki.ca_roll import CaSet, PublishedCa, load_ca_set

        if "authority" in self._given:  # given ready: no roll record consulted
            return CaSet(PublishedCa(self.__dict__["authority"], CRL_NAME, "ca/issuing.pem"))
        return load_ca_set(self.settings, self.crl_publisher, self.ca_rolls)

    @cached_property
    def authority(self) -> IssuingAuthority:
        return self.ca_set.active.authority

    @cached_property
    def issuer(self) -> RollingIssuer:
        from shared.domain.model import RotationState
        from shared.pki.ca_roll import RollingIssuer, load_ca_set, roll_fingerprint
        from shared.pki.profile import IssuancePolicy

        state = self.state

        def is_disallowed(device_id: str) -> bool:
            record = state.get(device_id)
            return record is not None and record.state is RotationState.DISALLOWED

        reload = watch = None
        if not {"authority", "ca_set"} & self._given:
            settings, publisher, store = self.settings, self.crl_publisher, self.ca_rolls

            def reload() -> CaSet:
                return load_ca_set(settings, publisher, store)

            def watch() -> object:
                return roll_fingerprint(store)

        return RollingIssuer(
            self.ca_set,
            self.ledger,
            self.audit,
            IssuancePolicy.from_settings(self.settings),
            self.clock,
            crl_publisher=self.crl_publisher,
            is_disallowed=is_disallowed,
            reload=reload,
            watch=watch,
        )

    @cached_property
    def ca_certificate_services(self) -> tuple[CaCertificateService | None, ...]:
        """(DPS, IoT Hub) CA certificates for the roll's proof of possession: none by
        default (an operator's step with ARM rights, docs/ca-roll.md); the local stack
        gives the emulator's."""
        return (None, None)

    @cached_property
    def reissue_campaigns(self) -> CampaignRunner:
        """What the CA roll starts its re-issue step through: the campaign engine."""
        from shared.domain.campaign_engine import EngineReissue

        return EngineReissue(self.campaign_service)

    @cached_property
    def ca_roll(self) -> CaRoll:
        from shared.pki.ca_roll import CaRoll, CaRollDeps, IssuingKeys, LocalRoot
        from shared.pki.profile import IssuancePolicy

        dps, hub = self.ca_certificate_services
        settings = self.settings
        return CaRoll(
            CaRollDeps(
                store=self.ca_rolls,
                keys=IssuingKeys(settings),
                issuer=self.issuer,
                enrollments=cast("EnrollmentStore", _Lazy(lambda: self.enrollments)),
                registry=cast("DeviceRegistry", _Lazy(lambda: self.registry)),
                ledger=self.ledger,
                audit=self.audit,
                crl_publisher=self.crl_publisher,
                clock=self.clock,
                campaigns=cast("CampaignRunner", _Lazy(lambda: self.reissue_campaigns)),
                dps_certificates=dps,
                hub_certificates=hub,
                local_root=lambda: LocalRoot.from_pki_dir(settings),
                backdate=IssuancePolicy.from_settings(settings).backdate,
            )
        )

    # ----------------------------------------------------------------- fleet
    @cached_property
    def credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    @cached_property
    def enrollments(self) -> EnrollmentStore:
        endpoint = self.settings.get("CERTROLL_DPS_ENDPOINT")
        if not endpoint:
            raise RuntimeError("CERTROLL_DPS_ENDPOINT is not set (or run `certroll serve` locally)")
        from shared.adapters.dps import DpsEnrollmentStore

        return DpsEnrollmentStore(endpoint, self.credential)

    @cached_property
    def registry(self) -> DeviceRegistry:
        host = self.settings.get("CERTROLL_IOTHUB_HOST")
        if not host:
            raise RuntimeError("CERTROLL_IOTHUB_HOST is not set (or run `certroll serve` locally)")
        from shared.adapters.iothub import IotHubRegistry

        return IotHubRegistry(host, self.credential)

    @cached_property
    def events(self) -> EventSink:
        endpoint = self.settings.get("CERTROLL_EVENTGRID_TOPIC_ENDPOINT")
        if not endpoint:
            return LoggingEventSink()
        from shared.adapters.eventgrid import EventGridSink

        return EventGridSink(endpoint, self.credential)

    # ----------------------------------------------------------------- operators
    @cached_property
    def token_validator(self) -> TokenValidator:
        from shared.adapters.entra import EntraConfig, EntraTokenValidator

        return EntraTokenValidator(EntraConfig.from_settings(self.settings))

    @cached_property
    def authenticator(self) -> OperatorAuthenticator:
        from shared.domain.auth import OperatorAuthenticator

        return OperatorAuthenticator(
            self.token_validator,
            self.settings.get("CERTROLL_OPERATOR_ROLE"),
            platform_auth_enforced=self.settings.flag("CERTROLL_PLATFORM_AUTH_ENFORCED"),
        )

    # ----------------------------------------------------------------- telemetry
    @cached_property
    def instrumentation(self) -> Instrumentation:
        """The one place that picks the telemetry adapters: Azure Monitor (the distro,
        managed identity) in the Function App, in-memory readers elsewhere."""
        from shared.adapters.otel import from_environment

        return from_environment()

    # ----------------------------------------------------------------- domain
    @cached_property
    def campaign_tracker(self) -> CampaignTracker:
        from shared.domain.campaign_engine import CampaignTracker

        return CampaignTracker(
            self.campaigns,
            self.clock,
            self.events,
            self.instrumentation.telemetry,
            enrollment_pass=self.enrollment_pass,
        )

    @cached_property
    def enrollment_pass(self) -> EnrollmentPass | None:
        """A campaign's read of the DPS enrollment query, kept in the campaign store (None
        where no DPS is configured: campaigns then read each enrollment)."""
        from shared.domain.campaign_enrollments import EnrollmentPass

        if "enrollments" not in self.__dict__ and not self.settings.get("CERTROLL_DPS_ENDPOINT"):
            return None
        from shared.domain.retry import Retrier

        return EnrollmentPass(
            self.campaigns, lambda: self.enrollments, self.clock, Retrier(self.clock).call
        )

    @cached_property
    def campaign_service(self) -> CampaignService:
        """Campaigns, paced for the configuration the settings name (the budget planner)."""
        from shared.domain.budget import CAMPAIGN_COST, Configuration, plan
        from shared.domain.campaign_engine import CampaignService, EngineSettings

        config = Configuration(
            hub_tier=self.settings.get("CERTROLL_HUB_TIER").upper(),
            hub_units=self.settings.int("CERTROLL_HUB_UNITS"),
            dps_instances=self.settings.int("CERTROLL_DPS_INSTANCES"),
        )
        headroom = float(self.settings.get("CERTROLL_CAMPAIGN_HEADROOM"))
        pacer = plan(config, 0, CAMPAIGN_COST, headroom).pacer(burst_seconds=1.0)
        return CampaignService(
            self.campaigns,
            self.registry,
            self.queue,
            self.events,
            self.clock,
            tracker=self.campaign_tracker,
            metrics=self.instrumentation.telemetry,
            audit=self.audit,
            pacer=pacer,
            enrollment_pass=self.enrollment_pass,
            # a message holds about a second of rotations at the pace: its desired-twin
            # patches stay inside the hub's one-second twin-update burst (50 on S1)
            settings=EngineSettings(batch_size=max(1, min(20, int(pacer.rotations_per_min / 60)))),
        )

    @cached_property
    def rotation(self) -> RotationService:
        from shared.domain.policy import RotationPolicy
        from shared.domain.rotation import RotationDeps, RotationService
        from shared.observability import ObservedEvents

        policy = RotationPolicy.from_settings(self.settings)
        telemetry = self.instrumentation.telemetry
        return RotationService(
            RotationDeps(
                state=self.state,
                ledger=self.ledger,
                audit=self.audit,
                enrollments=self.enrollments,
                registry=self.registry,
                issuer=self.issuer,
                events=ObservedEvents(self.events, telemetry, self.ledger, self.audit, policy),
                queue=self.queue,
                clock=self.clock,
                policy=policy,
                metrics=telemetry,
                tracer=self.instrumentation.tracer,
                ca_certificates=self._ca_certificates(),
                campaigns=self.campaign_tracker,
            )
        )

    def _ca_certificates(self) -> tuple[x509.Certificate, ...]:
        root = self.authority.root
        chain = self.authority.chain or (self.authority.certificate,)
        return (*chain, root) if root is not None else chain


class _Lazy:
    """Builds the object on first use (the CA roll's steps that never reach DPS or the
    hub run where neither is configured)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._built: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._built is None:
            self._built = self._make()
        return getattr(self._built, name)


def _memory_types() -> tuple[type, ...]:
    from shared.adapters.memory import MemoryLedger

    return (MemoryLedger,)


_OVERRIDABLE = {
    name for name, value in vars(Services).items() if isinstance(value, cached_property)
}

_lock = threading.Lock()
_services: Services | None = None


def get_services() -> Services:
    """The worker's services, built on first call from the environment."""
    global _services
    with _lock:
        if _services is None:
            _services = Services()
        return _services


@contextlib.contextmanager
def override_services(services: Services) -> Iterator[Services]:
    """Use ``services`` for the duration of the block (tests, local dev host)."""
    global _services
    with _lock:
        previous, _services = _services, services
    try:
        yield services
    finally:
        with _lock:
            _services = previous
