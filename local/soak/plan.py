"""The soak's fault plan: which fault hits where, drawn reproducibly from one seed.

Plan-level choices (which devices go offline first, whose clock is skewed by how much,
when the signing key is out, when Azurite restarts) come from one ``random.Random(seed)``,
drawn in a fixed order before the rotation starts; the second offline wave is drawn at
half-way from the devices still waiting. Per-call choices (does this DPS call answer
429?) are drawn from a stream per ``(port, method, subject)``: the n-th call of a stream
gets ``Random(f"{seed}/{stream}/{n}")``. Where the subject is a device, which of its calls
faults does not depend on how the worker threads interleave; the signing key's stream,
the worker kills (keyed on the queue message id Azurite assigns) and the Event Hub
disturbances (keyed on the pump pass) do.
Every injected fault is counted under its kind (:data:`PORT_FAULTS` per port, plus the
kinds of :data:`EVENT_FAULTS` and :data:`RUN_FAULTS`).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

#: the failures a port call can end in, as the real adapters raise them
PORT_FAULTS = ("429", "500", "503", "timeout", "reset")
#: the ports faults are injected at (``local/soak/ports.py``)
PORTS = ("dps", "hub", "storage", "signing_key")
#: faults of the event plumbing (``local/soak/stack.py``)
EVENT_FAULTS = (
    "eventhub_duplicated",
    "eventhub_reordered",
    "eventhub_coalesced",
    "eventgrid_dropped",
)
#: faults of the run as a whole (workers, writers, devices, processes)
RUN_FAULTS = (
    "etag_conflict",
    "worker_killed",
    "device_offline_hours",
    "device_clock_skew",
    "signing_key_outage",
    "azurite_restart",
)


def all_kinds() -> tuple[str, ...]:
    """Every fault kind the soak injects, as counted in ``faults_injected``."""
    return (
        *(f"{port}_{fault}" for port in PORTS for fault in PORT_FAULTS),
        *EVENT_FAULTS,
        *RUN_FAULTS,
    )


@dataclass(frozen=True)
class FaultRates:
    """How often each fault strikes (probabilities per call, batch, message or device)."""

    # a call fails, per port (storage is called ten times as often as the others)
    dps_call: float = 0.03
    hub_call: float = 0.02
    storage_call: float = 0.004
    signing_key_call: float = 0.06
    response_lost: float = 0.5  # a timed-out write was applied before the response was lost
    etag_conflict: float = 0.02  # a concurrent writer changes a state record just before a put
    worker_kill: float = 0.15  # a work-queue invocation dies mid-batch
    batch_duplicate: float = 0.1  # an Event Hub batch carries some messages twice
    batch_reorder: float = 0.2  # an Event Hub batch arrives shuffled
    batch_coalesce: float = 0.1  # a message waits and arrives with the next pass's batch
    eventgrid_drop: float = 0.2  # an Event Grid lifecycle event is lost
    offline: float = 0.05  # devices offline for hours (share of the fleet)
    skew: float = 0.1  # devices whose clock is off by minutes (share of the fleet)


@dataclass
class FaultPlan:
    seed: int
    rates: FaultRates = field(default_factory=FaultRates)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.counts: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def draw(self, stream: str) -> random.Random:
        """The generator for the next call of ``stream`` (independent of thread order)."""
        with self._lock:
            n = self._calls[stream]
            self._calls[stream] = n + 1
        return random.Random(f"{self.seed}/{stream}/{n}")

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def port_fault(self, port: str, stream: str) -> tuple[str, bool] | None:
        """``(fault, applied)`` when this call of ``stream`` at ``port`` fails, else None;
        ``applied``: a timed-out write took effect before its response was lost."""
        rng = self.draw(f"{port}/{stream}")
        if rng.random() >= getattr(self.rates, f"{port}_call"):
            return None
        fault = rng.choice(PORT_FAULTS)
        applied = fault == "timeout" and rng.random() < self.rates.response_lost
        self.count(f"{port}_{fault}")
        return fault, applied

    def chance(self, stream: str, probability: float) -> bool:
        return self.draw(stream).random() < probability

    def injected(self) -> dict[str, int]:
        """Every kind with its count (0 for a kind that never struck)."""
        with self._lock:
            return {kind: self.counts.get(kind, 0) for kind in all_kinds()}
