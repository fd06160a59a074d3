"""The rotation service: the one entry point the triggers and the CLI call.

A thin facade: each method takes one command from :mod:`shared.domain.commands` and
hands it to the use case that owns it.

==========================  ===================================================
use case                    module
==========================  ===================================================
twin reports, lifecycle     :mod:`~shared.domain.rotation.reports`
starting a renewal          :mod:`~shared.domain.rotation.renewal`
driving a request           :mod:`~shared.domain.rotation.driving`, ``steps``
finishing or failing        :mod:`~shared.domain.rotation.completion`
enrollment writes in bulk   :mod:`~shared.domain.rotation.batching`
slot choice                 :mod:`~shared.domain.rotation.slots`
sweep and queue batches     :mod:`~shared.domain.rotation.sweeping`
reconcile on 401            :mod:`~shared.domain.rotation.reconcile`
disallow / allow            :mod:`~shared.domain.rotation.access`
status                      :mod:`~shared.domain.rotation.status`
the record's transitions    :mod:`~shared.domain.rotation.transitions` (pure)
read-modify-write           :mod:`~shared.domain.rotation.unit_of_work`
==========================  ===================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from shared.domain.commands import (
    Allow,
    DeviceConnected,
    DeviceCreated,
    Disallow,
    RotateBatch,
    StartRenewal,
    Status,
    Sweep,
    TwinReported,
)
from shared.domain.errors import NotFoundError
from shared.domain.model import (
    ConnectionFailure,
    IndividualEnrollment,
    RotationRecord,
    RotationState,
)
from shared.domain.rotation.access import Access
from shared.domain.rotation.batching import handle_batch
from shared.domain.rotation.completion import Completion
from shared.domain.rotation.context import RotationContext, RotationDeps
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.reconcile import Reconciler, UnknownDevices
from shared.domain.rotation.renewal import Renewals
from shared.domain.rotation.reports import DeviceReports
from shared.domain.rotation.results import DeviceView, DisallowResult, ReconcileOutcome
from shared.domain.rotation.states import trigger_of
from shared.domain.rotation.status import device_status
from shared.domain.rotation.steps import ForwardSteps
from shared.domain.rotation.sweeping import FleetWork
from shared.domain.sweep import BatchResult, SweepPlan

T = TypeVar("T")
R = TypeVar("R")


class RotationService:
    """Rotates the certificate of one device at a time (docs/rotation.md)."""

    def __init__(self, deps: RotationDeps) -> None:
        self.deps = deps
        self.policy = deps.policy
        self.ctx = ctx = RotationContext(deps)
        self.retrier = ctx.retrier
        self.completion = Completion(ctx)
        self.driver = Driver(ctx, ForwardSteps(ctx, self.completion), self.completion)
        self.renewals = Renewals(ctx, self.driver)
        self.reports = DeviceReports(ctx, self.driver, self.completion, self.renewals)
        self.fleet = FleetWork(ctx, self.driver, self.renewals)
        self.reconciler = Reconciler(ctx)
        self.access = Access(ctx, self.driver, self.renewals)

    # ------------------------------------------------------------------ device events

    def on_twin_reported(self, event: TwinReported) -> RotationRecord:
        """A device's reported ``x509`` section changed (routed TwinChangeEvents)."""
        return self.reports.twin_reported(event)

    def in_enrollment_batch(self, items: Sequence[T], handle: Callable[[T], R]) -> list[R]:
        """Handle a batch of device events (``handle`` per item) with their individual-
        enrollment writes sent as DPS bulk operations, ten a call (``batching.py``);
        ``handle`` must let :class:`EnrollmentWriteWaits` through. Returns the outcomes."""
        return handle_batch(items, handle, self._bulk_write)

    def _bulk_write(self, call: Sequence[IndividualEnrollment]) -> list[tuple[str, int]]:
        errors = self.ctx.call(self.deps.enrollments.update_individuals_if_match, call)
        self.ctx.metric("certroll.dps_bulk_write", refused=str(len(errors)))
        return [(e.registration_id, e.status) for e in errors]

    def on_device_connected(self, event: DeviceConnected) -> RotationRecord | None:
        """DeviceConnected: deliver what waits for the device, or look for confirmation."""
        return self.reports.device_connected(event)

    def on_device_created(self, event: DeviceCreated) -> RotationRecord:
        """DeviceCreated: make the device's (idle) record, adopting the hub's thumbprint."""
        return self.reports.device_created(event)

    def on_connection_failure(
        self, failure: ConnectionFailure, unknown: UnknownDevices | None = None
    ) -> ReconcileOutcome:
        """A 401003/403012 from the hub's Connections log; see docs/rotation.md. With
        ``unknown``, a refusal for a device id certroll has never seen is gathered there
        instead of audited (write it with :meth:`on_unknown_devices`)."""
        return self.reconciler.on_connection_failure(failure, unknown)

    def on_unknown_devices(self, unknown: UnknownDevices) -> None:
        """One audit entry for the unknown device ids of a Connections-log batch."""
        self.reconciler.audit_unknown(unknown)

    # ------------------------------------------------------------------ rotations

    def start_renewal(self, command: StartRenewal) -> RotationRecord:
        """Ask the device for a CSR; a running rotation is returned unchanged."""
        return self.renewals.start(command.device_id, command.reason, command.actor)

    def advance(self, device_id: str) -> RotationRecord:
        """Drive one record as far as it can go now (resumes stuck and offline devices)."""
        rec = self.ctx.uow.get(device_id)
        if rec is None:
            raise NotFoundError(f"no rotation record for device {device_id}")
        if rec.state is RotationState.FAILED:
            return self.renewals.start(device_id, trigger_of(rec.reason), self.deps.actor)
        return self.driver.run_until_waiting(rec, force=True)

    def process_batch(self, batch: RotateBatch) -> BatchResult:
        """The queue worker: start or resume the rotation of each listed device."""
        return self.fleet.process_batch(batch)

    def sweep(self, command: Sweep | None = None) -> SweepPlan:
        """Find what needs work and (unless a dry run) enqueue it."""
        return self.fleet.sweep(command or Sweep())

    # ------------------------------------------------------------------ operators

    def disallow(self, command: Disallow) -> DisallowResult:
        return self.access.disallow(command)

    def allow(self, command: Allow) -> RotationRecord:
        return self.access.allow(command)

    def status(self, query: Status) -> DeviceView:
        return device_status(self.ctx, query)
