"""The local stack: everything certroll needs, on one machine, with no cloud.

:class:`LocalStack` builds, for one ``CERTROLL_HOME`` and one set of settings:

- the PKI (``init_pki`` when absent; the issuing key inside SoftHSM2 when it is installed,
  else an encrypted PEM file, which is for development only);
- Azurite-backed storage with table prefix, work queue and PKI container unique to the
  run, so reruns and parallel runs never see each other's rows;
- the fleet emulator (DPS + IoT Hub) on the stack's clock: issuer, rotation service,
  emulator and simulated devices share that one clock, so time can be moved;
- the :class:`~shared.bootstrap.Services` with the emulator as enrollment store and device
  registry: in process (``transport="inproc"``) or through the production DPS/IoT Hub
  adapters against the emulator's REST front end over loopback (``transport="http"``);
- the dev host over ``function_app.app``, serving HTTP on loopback with a function key;
- the loopback token issuer (:mod:`local.token_issuer`) the operator API validates
  bearer tokens against (:meth:`LocalStack.operator_token` mints one);
- the event pump that plays the Azure plumbing: the emulator's routed twin changes and
  Connections-log records go to the Event Hub triggers (one emulator envelope is one
  Event Hub message), its lifecycle events to the Event Grid webhook (Event Grid schema,
  through the dev host's WSGI app with the function key), the work queue to the queue
  trigger, and :meth:`LocalStack.fire_timer` to the timer.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken
from werkzeug.test import Client

from local.devhost import DevHost
from local.emulator import CONNECTIONS, LIFECYCLE, TWIN_CHANGES, FleetEmulator
from local.storage_kinds import storage_call_kind
from shared.bootstrap import (
    CRL_NAME,
    Services,
    StorageBundle,
    azure_storage,
    override_services,
)
from shared.clock import SystemClock
from shared.domain.errors import InvalidRequestError
from shared.ports import Clock, DeviceRegistry, EnrollmentStore
from shared.settings import Settings

if TYPE_CHECKING:
    from local.emulator.http import RunningServer

logger = logging.getLogger(__name__)

TRANSPORTS = ("inproc", "http", "https")
KEY_BACKENDS = ("pkcs11", "file")
FUNCTION_KEY_FILE = "function-key"
#: the Event Grid subscription in infra/ delivers only these system events
SUBSCRIBED_EVENT_TYPES = frozenset(
    {"Microsoft.Devices.DeviceConnected", "Microsoft.Devices.DeviceCreated"}
)
EVENT_HUB_BATCH = 100  # host.json extensions.eventHubs.maxEventBatchSize
#: the Event Hubs' partitions (infra/modules/eventhubs.bicep, partitionCount): the Functions
#: host runs one invocation per partition at a time, so this many run side by side
EVENT_HUB_PARTITIONS = 8
EVENT_GRID_BATCH = 50
MAX_REDELIVERIES = 8  # the Event Hubs triggers' retry policy (functions/hub_events.py)
#: an empty work queue is polled again after this long, unless the stack's own timer
#: has fired since (the sweep fills the queue); the Functions host backs off the same
#: way, up to host.json ``queues.maxPollingInterval`` (1 min by default)
QUEUE_IDLE_POLL_SECONDS = 1.0
EVENT_GRID = "eventgrid:device_lifecycle"
#: ``LocalStack(wrap_ports=...)``: gets the settings and the ports the services are built
#: from (``Services`` overrides) and returns them, e.g. wrapped to inject faults (the soak)
WrapPorts = Callable[[Settings, dict[str, Any]], dict[str, Any]]


def load_function_app() -> Any:
    """The Function App (``function_app`` is installed with the package)."""
    return importlib.import_module("function_app")


def softhsm_available() -> bool:
    from shared.adapters.pkcs11 import SOFTHSM_CANDIDATES

    return any(Path(p).exists() for p in SOFTHSM_CANDIDATES)


def choose_key_backend(home: Path, requested: str | None = None) -> str:
    """The backend of an existing PKI under ``home``, else ``requested``, else pkcs11 on
    SoftHSM2 when installed, else file."""
    meta = home / "pki" / "pki.json"
    if meta.is_file():
        try:
            existing = json.loads(meta.read_text(encoding="utf-8")).get("backend")
        except ValueError:
            existing = None
        if existing in KEY_BACKENDS:
            if requested and requested != existing:
                raise InvalidRequestError(
                    "key_backend_mismatch",
                    f"the PKI in {home / 'pki'} uses the {existing} backend, not {requested}",
                )
            return str(existing)
    if requested:
        if requested not in KEY_BACKENDS:
            raise InvalidRequestError(
                "key_backend_invalid", f"key backend {requested!r} is not one of pkcs11, file"
            )
        return requested
    return "pkcs11" if softhsm_available() else "file"


def backend_note(backend: str) -> str:
    if backend == "pkcs11":
        return "issuing key inside a SoftHSM2 token (PKCS#11), never leaves the token"
    why = "chosen" if softhsm_available() else "SoftHSM2 not found"
    return f"issuing key in an encrypted PEM file: for development only ({why})"


class _Counter:
    """A count of requests, in total and by kind (:func:`storage_call_kind`)."""

    def __init__(self) -> None:
        self.value = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, kind: str = "other") -> None:
        with self._lock:
            self.value += 1
            self.kinds[kind] += 1

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.kinds)


#: storage requests sent by the local stack's clients (the benchmark divides by rotations)
STORAGE_CALLS = _Counter()


def loopback_transport() -> Any:
    """The HTTP transport of the local stack's storage clients (Azurite on loopback):
    libcurl (:mod:`local.curl_transport`), counting requests in :data:`STORAGE_CALLS`."""
    from local.curl_transport import CurlTransport

    class CountingTransport(CurlTransport):
        def send(self, request: Any, **kwargs: Any) -> Any:
            STORAGE_CALLS.add(storage_call_kind(request.method, request.url))
            return super().send(request, **kwargs)

    return CountingTransport()


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process (``python``) and, when one runs on this
    machine, by the Azurite process (``azurite``; read from ``/proc``)."""
    out = {"python": time.process_time()}
    ticks = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(Path(os.fsdecode(a)).name == "azurite" for a in argv[:2]):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["azurite"] = out.get("azurite", 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def local_storage(settings: Settings) -> tuple[StorageBundle, Any]:
    """``(StorageBundle, QueueServiceClient)`` on the connection string of ``settings``
    (Azurite), through the loopback transport."""
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    conn = settings.get("CERTROLL_STORAGE")
    if not conn or conn == "memory" or "=" not in conn:
        raise InvalidRequestError(
            "storage_invalid", "the local stack needs CERTROLL_STORAGE as a connection string"
        )
    tables = TableServiceClient.from_connection_string(conn, transport=loopback_transport())
    queues = QueueServiceClient.from_connection_string(conn, transport=loopback_transport())
    blobs = BlobServiceClient.from_connection_string(conn, transport=loopback_transport())
    return azure_storage(settings, tables, blobs, queues), queues


def drop_run_storage(settings: Settings) -> None:
    """Delete the tables, queues and container named by ``settings`` (one run's storage)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    from shared.adapters.storage_clients import table_names

    conn = settings.get("CERTROLL_STORAGE")
    tables = TableServiceClient.from_connection_string(conn, transport=loopback_transport())
    from shared.adapters.ca_roll_store import ca_roll_table_name

    for name in (*table_names(settings), ca_roll_table_name(settings)):
        tables.delete_table(name)  # no error when absent
    queues = QueueServiceClient.from_connection_string(conn, transport=loopback_transport())
    queue = settings.get("CERTROLL_WORK_QUEUE")
    for name in (queue, f"{queue}-poison"):
        with contextlib.suppress(ResourceNotFoundError):
            queues.delete_queue(name)
    blobs = BlobServiceClient.from_connection_string(conn, transport=loopback_transport())
    with contextlib.suppress(ResourceNotFoundError):
        blobs.delete_container(settings.get("CERTROLL_PKI_CONTAINER"))
    logger.info("dropped the storage of %s", settings.get("CERTROLL_TABLE_PREFIX"))


def run_settings(settings: Settings, run_id: str) -> Settings:
    """``settings`` with the table prefix, work queue and PKI container of run ``run_id``."""
    if not re.fullmatch(r"[a-z0-9]{1,16}", run_id):
        raise InvalidRequestError(
            "run_id_invalid", "the run id must be 1-16 lower-case letters and digits"
        )
    values = dict(settings.values)
    values.update(
        {
            "CERTROLL_TABLE_PREFIX": f"{settings.get('CERTROLL_TABLE_PREFIX')}{run_id}",
            "CERTROLL_WORK_QUEUE": f"{settings.get('CERTROLL_WORK_QUEUE')}-{run_id}",
            "CERTROLL_PKI_CONTAINER": f"{settings.get('CERTROLL_PKI_CONTAINER')}-{run_id}",
        }
    )
    return Settings(values)


class StaticToken:
    """A bearer-token credential for the emulator's REST front end (accepts any token)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-emulator", int(datetime.now(UTC).timestamp()) + 3600)


@dataclass
class FleetPorts:
    """The enrollment store and device registry over one fleet emulator."""

    enrollments: EnrollmentStore
    registry: DeviceRegistry
    server: RunningServer | None = None  # the REST front end (``http``/``https`` only)
    ca_file: Path | None = None  # what a client of the ``https`` front end trusts

    def close(self) -> None:
        """Close the REST adapters' clients and stop the front end (``http``); the
        emulator's own objects hold nothing to close."""
        if self.server is None:
            return
        for part in (self.enrollments, self.registry):
            close = getattr(part, "close", None)
            if close is not None:
                close()
        self.server.close()


def fleet_ports(
    emulator: FleetEmulator, transport: str, clock: Clock, *, retry_total: int = 3
) -> FleetPorts:
    """The fleet ports the rotation service uses, over ``emulator``: its own objects
    (``inproc``), or the production DPS and IoT Hub adapters against its REST front end
    on a loopback port (``http``, or ``https`` with a server certificate from a PKI of
    its own that the adapters trust, as Microsoft's SDKs need; ``retry_total`` goes to
    their azure-core retry policy)."""
    if transport == "inproc":
        return FleetPorts(emulator.dps, emulator.hub)
    if transport not in TRANSPORTS:
        raise InvalidRequestError(
            "transport_invalid", f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}"
        )
    from local.emulator.http import serve
    from shared.adapters.dps import DpsEnrollmentStore
    from shared.adapters.iothub import IotHubRegistry

    token = StaticToken()
    if transport == "http":
        server = serve(emulator)
        return FleetPorts(
            DpsEnrollmentStore(server.url, token, retry_total=retry_total),
            IotHubRegistry(server.host, token, scheme="http", clock=clock, retry_total=retry_total),
            server,
        )
    from azure.core.pipeline.transport import RequestsTransport

    from local.emulator.http.tls import loopback_tls
    from shared.pki.local_ca import generate_pki

    # TLS clients check validity against the machine's time, not the stack's clock
    pki = generate_pki()
    tls = loopback_tls(pki.issuing_certificate, pki.issuing_key, root=pki.root_certificate)
    server = serve(emulator, ssl_context=tls.context)
    verify = str(tls.ca_file)
    return FleetPorts(
        DpsEnrollmentStore(
            server.url,
            token,
            transport=RequestsTransport(connection_verify=verify),
            retry_total=retry_total,
        ),
        IotHubRegistry(
            server.host,
            token,
            clock=clock,
            transport=RequestsTransport(connection_verify=verify),
            retry_total=retry_total,
        ),
        server,
        tls.ca_file,
    )


def load_or_create_function_key(home: Path) -> tuple[str, Path]:
    """The dev host's function key, kept in ``$CERTROLL_HOME/function-key`` (mode 600)."""
    path = home / FUNCTION_KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, path
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key, path


@dataclass
class PumpStats:
    """What one :meth:`LocalStack.pump` delivered."""

    twin_messages: int = 0
    connection_messages: int = 0
    lifecycle_events: int = 0
    queue_messages: int = 0
    duplicates: int = 0
    redeliveries: int = 0

    @property
    def total(self) -> int:
        return (
            self.twin_messages
            + self.connection_messages
            + self.lifecycle_events
            + self.queue_messages
            + self.duplicates
            + self.redeliveries
        )

    def add(self, other: PumpStats) -> None:
        self.twin_messages += other.twin_messages
        self.connection_messages += other.connection_messages
        self.lifecycle_events += other.lifecycle_events
        self.queue_messages += other.queue_messages
        self.duplicates += other.duplicates
        self.redeliveries += other.redeliveries


def _device_of(message: dict[str, Any]) -> str:
    """The device a routed message, Event Grid event or resource-log envelope is about."""
    for section in ("properties", "systemProperties", "data"):
        part = message.get(section)
        if isinstance(part, dict):
            for name in ("deviceId", "iothub-connection-device-id"):
                value = part.get(name)
                if isinstance(value, str):
                    return value
    subject = message.get("subject")
    if isinstance(subject, str):
        return subject
    return ""


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LocalStack:
    """The local services for one run; use as a context manager or call start/close."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        transport: str = "inproc",
        key_backend: str | None = None,
        run_id: str | None = None,
        pki_not_before: datetime | None = None,
        enforce_limits: bool = True,
        duplicate_fraction: float = 0.0,
        seed: int = 0,
        partitions: int = EVENT_HUB_PARTITIONS,
        hub_units: int = 1,
        wrap_ports: WrapPorts | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise InvalidRequestError(
                "transport_invalid", f"transport {transport!r} is not one of inproc, http"
            )
        if partitions < 1:
            raise InvalidRequestError("partitions_invalid", "partitions must be at least 1")
        if not 0.0 <= duplicate_fraction <= 1.0:
            raise InvalidRequestError(
                "duplicate_fraction_invalid", "duplicate_fraction must be within 0..1"
            )
        base = settings or Settings.from_env()
        home = Path(base.get("CERTROLL_HOME")).resolve()
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.home = home
        self.backend = choose_key_backend(home, key_backend)
        values = dict(run_settings(base, self.run_id).values)
        values.update({"CERTROLL_HOME": str(home), "CERTROLL_KEY_BACKEND": self.backend})
        self.settings = Settings(values)
        self.clock: Clock = clock or SystemClock()
        self.transport = transport
        self.pki_not_before = pki_not_before
        self.enforce_limits = enforce_limits
        self.hub_units = hub_units
        self.wrap_ports = wrap_ports
        self.duplicate_fraction = duplicate_fraction
        self._rng = random.Random(seed)
        self._held_back: list[dict[str, Any]] = []
        self._retry: list[tuple[int, str, list[dict[str, Any]]]] = []
        self._queue_idle_until = 0.0  # time.monotonic() before which the queue is not polled
        self.dropped = 0
        self.partitions = partitions
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.totals = PumpStats()
        self.timer_fired = 0
        self.pki_created = False
        self.url: str | None = None
        self.function_key, self.function_key_path = load_or_create_function_key(home)
        self._exit = contextlib.ExitStack()
        self._started = False
        self.emulator: FleetEmulator
        self.services: Services
        self.devhost: DevHost
        self.fleet_server: Any = None
        self.fleet_ca_file: Path | None = None  # trust anchor of the https front end
        self._client: Client

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend_note(self) -> str:
        return backend_note(self.backend)

    def start(self, *, serve: bool = True, host: str = "127.0.0.1", port: int = 0) -> LocalStack:
        """Build everything; with ``serve`` the dev host listens on ``host:port``."""
        if self._started:
            return self
        self._ensure_pki()
        self._start_token_issuer()
        self.emulator = FleetEmulator(
            self.clock, enforce_limits=self.enforce_limits, units=self.hub_units
        )
        fleet = fleet_ports(self.emulator, self.transport, self.clock)
        self._exit.callback(fleet.close)
        if fleet.server is not None:
            self.fleet_server = fleet.server
            self.fleet_ca_file = fleet.ca_file
            values = dict(self.settings.values)
            values["CERTROLL_DPS_ENDPOINT"] = fleet.server.url
            values["CERTROLL_IOTHUB_HOST"] = fleet.server.host
            self.settings = Settings(values)
        from shared.adapters.memory import MemoryEventSink

        storage, queues = local_storage(self.settings)
        ports: dict[str, Any] = {
            "clock": self.clock,
            "enrollments": fleet.enrollments,
            "registry": fleet.registry,
            "events": MemoryEventSink(),
            "storage": storage,
            "ca_certificate_services": (
                self.emulator.dps_certificates,
                self.emulator.hub_certificates,
            ),
        }
        if self.wrap_ports is not None:
            ports = self.wrap_ports(self.settings, ports)
        self.services = Services(self.settings, **ports)
        # wire and check storage and the issuing key now, not on the first event
        self.services.issuer.publish_crl()
        self._exit.enter_context(override_services(self.services))

        self.devhost = DevHost(
            load_function_app().app,
            dict(self.settings.values),
            self.function_key,
            queue_service=queues,
        )
        self._create_queue(queues)
        self._client = Client(self.devhost.wsgi)
        if serve:
            werkzeug_log = logging.getLogger("werkzeug")
            if werkzeug_log.level == logging.NOTSET:  # one line per request is noise here
                werkzeug_log.setLevel(logging.WARNING)
            self.url = self.devhost.serve(host, port)
            self._exit.callback(self.devhost.close)
        self._started = True
        logger.info(
            "local stack %s up: %s transport, %s backend, dev host %s",
            self.run_id,
            self.transport,
            self.backend,
            self.url or "(not serving)",
        )
        return self

    def _start_token_issuer(self) -> None:
        """The loopback token issuer (:mod:`local.token_issuer`) the API trusts, as it
        trusts Entra ID in Azure."""
        from local.token_issuer import LocalTokenIssuer

        self.token_issuer = LocalTokenIssuer(self.home)
        self.token_issuer.serve()
        self._exit.callback(self.token_issuer.close)
        self.settings = Settings({**self.settings.values, **self.token_issuer.settings_values()})

    def operator_token(self, name: str = "operator@certroll.local", **kwargs: Any) -> str:
        """A token of the loopback issuer with the operator app role (see ``mint``)."""
        kwargs.setdefault("roles", (self.settings.get("CERTROLL_OPERATOR_ROLE"),))
        token: str = self.token_issuer.mint(name, **kwargs)
        return token

    def _create_queue(self, queues: Any) -> None:
        """The work queue exists before the queue trigger polls it (infra/ creates it in
        Azure)."""
        from azure.core.exceptions import ResourceExistsError

        client = queues.get_queue_client(self.settings.get("CERTROLL_WORK_QUEUE"))
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()

    def close(self) -> None:
        self._exit.close()

    def drop_storage(self) -> None:
        """Delete this run's tables, work queues and PKI container (tests, benchmarks)."""
        drop_run_storage(self.settings)
        self._started = False

    def _ensure_pki(self) -> None:
        from shared.pki.local_ca import ISSUING_CERT_FILE, init_pki

        if (self.home / "pki" / ISSUING_CERT_FILE).is_file():
            return
        init_pki(
            self.home,
            self.backend,
            settings=self.settings,
            now=self.pki_not_before,
        )
        self.pki_created = True

    # ----------------------------------------------------------------- helpers

    @property
    def issuer(self) -> Any:
        return self.services.issuer

    def crl_url(self) -> str:
        return self.services.crl_publisher.url_for(CRL_NAME)

    def fire_timer(self) -> int:
        """The timer trigger (``daily_sweep``) fires now."""
        self.timer_fired += 1
        self.poll_queue_now()  # the sweep fills the queue
        return self.devhost.fire_timer()

    def poll_queue_now(self) -> None:
        """The next pump polls the work queue even if it was found empty a moment ago
        (something outside the pump, e.g. an API call, just sent a message)."""
        self._queue_idle_until = 0.0

    def post_event_grid(self, events: list[dict[str, Any]], function_name: str) -> int:
        """Deliver Event Grid schema events to the webhook as Event Grid does; the status."""
        response = self._client.post(
            f"/runtime/webhooks/eventgrid?functionName={function_name}",
            data=json.dumps(events),
            headers={
                "aeg-event-type": "Notification",
                "x-functions-key": self.function_key,
                "Content-Type": "application/json",
            },
        )
        return response.status_code

    # ----------------------------------------------------------------- the pump

    def pump(self) -> PumpStats:
        """One pass over every event source; returns what was delivered.

        Deliveries run on ``partitions`` worker threads, as the Functions host runs one
        Event Hubs invocation per partition and Event Grid/queue invocations side by side.
        Messages are partitioned by device id (IoT Hub routing does the same), so one
        device's messages stay in order. A delivery whose function failed is kept and
        delivered again on the next pass, as Event Grid (retry schedule) and the Event Hubs
        trigger (its retry policy) do, up to ``MAX_REDELIVERIES`` times; the queue trigger's
        retry and poison rules are the dev host's.
        """
        stats = PumpStats()
        events = self.emulator.events
        settings = self.settings
        lanes: list[list[tuple[int, str, list[dict[str, Any]]]]] = [
            [] for _ in range(self.partitions)
        ]
        retry, self._retry = self._retry, []
        for attempt, target, batch in retry:
            lanes[self._lane(batch[0])].append((attempt + 1, target, batch))
            stats.redeliveries += 1

        lifecycle = [
            e for e in events.drain(LIFECYCLE) if e.get("eventType") in SUBSCRIBED_EVENT_TYPES
        ]
        stats.lifecycle_events = len(lifecycle)
        self._plan(lanes, EVENT_GRID, lifecycle, EVENT_GRID_BATCH)

        twin = events.drain(TWIN_CHANGES)
        stats.twin_messages = len(twin)
        hub_name = settings.get("CERTROLL_TWIN_EVENTHUB")
        self._plan(lanes, hub_name, twin, EVENT_HUB_BATCH)
        if self._held_back:  # at-least-once: redeliver a share of last pass's messages
            again, self._held_back = self._held_back, []
            stats.duplicates = len(again)
            self._plan(lanes, hub_name, again, EVENT_HUB_BATCH)
        if self.duplicate_fraction:
            self._held_back = [m for m in twin if self._rng.random() < self.duplicate_fraction]

        connections = [
            {"body": envelope, "properties": {}, "systemProperties": {}}
            for envelope in events.drain(CONNECTIONS)
        ]
        stats.connection_messages = len(connections)
        self._plan(
            lanes, settings.get("CERTROLL_CONNECTIONS_EVENTHUB"), connections, EVENT_HUB_BATCH
        )

        busy = [lane for lane in lanes if lane]
        if len(busy) == 1:
            self._run_lane(busy[0])
        elif busy:
            list(self._pool().map(self._run_lane, busy))
        stats.queue_messages = self._pump_queue()
        self.totals.add(stats)
        return stats

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.partitions, thread_name_prefix="pump")
            self._exit.callback(self._executor.shutdown)
        return self._executor

    def _lane(self, message: dict[str, Any]) -> int:
        return zlib.crc32(_device_of(message).encode()) % self.partitions

    def _plan(
        self,
        lanes: list[list[tuple[int, str, list[dict[str, Any]]]]],
        target: str,
        messages: list[dict[str, Any]],
        batch_size: int,
    ) -> None:
        split: list[list[dict[str, Any]]] = [[] for _ in lanes]
        for message in messages:
            split[self._lane(message)].append(message)
        for lane, part in zip(lanes, split, strict=True):
            for batch in _batches(part, batch_size):
                lane.append((1, target, list(batch)))

    def _run_lane(self, lane: list[tuple[int, str, list[dict[str, Any]]]]) -> None:
        for attempt, target, batch in lane:
            self._deliver(target, batch, attempt)

    def _pump_queue(self) -> int:
        """Run the queue trigger until the queue is empty, ``partitions`` invocations at
        once: each worker takes one message at a time, as the Functions host runs the
        messages of a fetched batch (host.json ``queues.batchSize``) side by side rather
        than one after another (a message carries up to 100 devices). An empty queue is
        polled again after ``QUEUE_IDLE_POLL_SECONDS``, or on the next pump after the
        timer fires."""

        def drain() -> int:
            handled = 0
            while True:
                n = self.devhost.pump_queue(max_messages=1)
                handled += n
                if n == 0:
                    return handled

        if time.monotonic() < self._queue_idle_until:
            return 0
        first = self.devhost.pump_queue(max_messages=1)
        if first == 0:  # (a failed message counts as handled: its retry keeps polling on)
            self._queue_idle_until = time.monotonic() + QUEUE_IDLE_POLL_SECONDS
            return 0
        return first + sum(self._pool().map(lambda _: drain(), range(self.partitions)))

    def _deliver(self, target: str, batch: list[dict[str, Any]], attempt: int) -> None:
        if target == EVENT_GRID:
            ok = self.post_event_grid(batch, "device_lifecycle") == 200
        else:
            try:
                self.devhost.feed_event_hub(target, batch)
                ok = True
            except Exception as exc:
                logger.warning("Event Hub %s batch failed (attempt %d): %s", target, attempt, exc)
                ok = False
        if ok:
            return
        if attempt >= MAX_REDELIVERIES:
            with self._lock:
                self.dropped += len(batch)
            logger.error("%s: %d events dropped after %d attempts", target, len(batch), attempt)
            return
        with self._lock:
            self._retry.append((attempt, target, batch))

    def pending(self) -> int:
        """Events waiting in the emulator plus held-back redeliveries."""
        events = self.emulator.events
        return (
            events.pending(LIFECYCLE)
            + events.pending(TWIN_CHANGES)
            + events.pending(CONNECTIONS)
            + len(self._held_back)
            + len(self._retry)
        )


def demo_times(now: datetime, *, age: timedelta, margin: timedelta) -> tuple[datetime, datetime]:
    """(fleet birth, rotation start) for a fleet ``age`` old that rotates ``margin`` before
    ``now`` (so certificates issued during the run are already valid at ``now``)."""
    start = now - margin
    return start - age, start
