"""Scheduled direct-method jobs of the emulated hub: the job record and the loop that runs
the due work (a leaf under :mod:`local.emulator.core`, which runs it, and
:mod:`local.emulator.hub`, which schedules jobs)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from local.emulator import limits
from local.emulator.query import Predicate
from local.emulator.store import json_copy
from shared.domain.model import JobStatus, MethodResult

if TYPE_CHECKING:
    from local.emulator.core import Core, DeviceSession

logger = logging.getLogger(__name__)


@dataclass
class JobRecord:
    job_id: str
    condition: str
    predicate: Predicate
    method_name: str
    payload: Any
    start_time: datetime
    deadline: datetime
    status: str = "scheduled"
    targets: deque[str] = field(default_factory=deque)
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    results: dict[str, MethodResult | None] = field(default_factory=dict)

    def view(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id,
            status=self.status,
            succeeded=self.succeeded,
            failed=self.failed,
            pending=len(self.targets) + self.running,
        )


def run_jobs(core: Core) -> int:
    """Advance every due job as far as the job-device-operation budget allows."""
    calls = 0
    while True:
        with core.txn():
            now = core.now()
            work: tuple[JobRecord, str, DeviceSession | None] | None = None
            for job in core.jobs.values():
                if job.status in ("completed", "failed", "cancelled") or now < job.start_time:
                    continue
                if job.status in ("scheduled", "queued"):
                    job.status = "running"
                    job.targets = deque(
                        d.device_id for d in core.order if d is not None and job.predicate(d)
                    )
                if now > job.deadline:
                    job.failed += len(job.targets)
                    for dev in job.targets:
                        job.results[dev] = None
                    job.targets.clear()
                if not job.targets:
                    if job.running == 0:
                        job.status = "completed"
                    continue
                if core.limiter.try_take(limits.HUB_JOB_DEVICE_OPS) > 0:
                    break
                device_id = job.targets.popleft()
                job.running += 1
                d = core.devices.get(device_id)
                work = (job, device_id, d.session if d is not None else None)
                break
        if work is None:
            return calls
        job, device_id, session = work
        result: MethodResult | None = None
        if session is not None and session.connected:
            try:
                status, payload = session.handler.on_method(job.method_name, json_copy(job.payload))
                result = MethodResult(int(status), json_copy(payload))
            except Exception:
                logger.exception("device %s failed job %s method", device_id, job.job_id)
        calls += 1
        with core.txn():
            job.running -= 1
            job.results[device_id] = result
            if result is not None and 200 <= result.status < 300:
                job.succeeded += 1
            else:
                job.failed += 1
            if not job.targets and job.running == 0:
                job.status = "completed"
