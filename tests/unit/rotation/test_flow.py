"""The rotation state machine end to end on fakes: every transition, slots, events."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.domain.commands import (
    DeviceConnected,
    Disallow,
    StartRenewal,
    Status,
    Sweep,
    TwinReported,
)
from shared.domain.errors import (
    DeviceDisallowedError,
    InvalidRequestError,
    JobQuotaExceededError,
    NotFoundError,
    ServiceError,
)
from shared.domain.messages import parse_rotate_message
from shared.domain.model import (
    AuthType,
    CertificateStatus,
    RevocationReason,
    RotationRecord,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import Device, World, thumb

DAY = 86400.0


class Recording:
    """Wraps the state store to list every state written."""

    def __init__(self, world: World) -> None:
        self.states: list[RotationState] = []
        inner = world.state.put

        def put(record: RotationRecord) -> RotationRecord:
            saved = inner(record)
            if not self.states or self.states[-1] is not saved.state:
                self.states.append(saved.state)
            return saved

        world.state.put = put  # type: ignore[method-assign]


def adopt(svc: RotationService, dev: Device) -> RotationRecord:
    return svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.section(), twin_version=1))


def rotate(svc: RotationService, dev: Device, reason: Trigger = Trigger.MANUAL) -> RotationRecord:
    """One full rotation driven by the device's answers."""
    svc.start_renewal(StartRenewal(dev.device_id, reason, "operator@example.com"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
    return svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.install()))


def test_every_transition_in_order(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.current_thumbprint == thumb(dev.cert)
    recorder = Recording(world)
    old_cert = dev.cert

    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "operator@example.com"))
    assert started.state is RotationState.CSR_REQUESTED
    assert dev.renewal_request() == started.request_id
    assert world.registry.twins["dev-1"].desired["x509"]["renewal"]["reason"] == "manual"

    answer = dev.answer()
    assert answer is not None
    after_csr = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    # the CSR drove the record through issue, enroll, deliver and the reprovision call
    assert after_csr.state is RotationState.REPROVISION_SENT
    assert world.registry.methods == [("dev-1", "reprovision", {"requestId": started.request_id})]
    delivered = dev.delivered()
    assert delivered is not None
    assert after_csr.new_thumbprint == thumb(delivered)

    done = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    # one write per device round trip (docs/rotation.md): issue, enroll, deliver and the
    # reprovision call go from csr_received to reprovision_sent in one write; the
    # confirmation and the finishing steps from reprovision_sent to idle in one
    assert recorder.states == [
        RotationState.CSR_REQUESTED,
        RotationState.CSR_RECEIVED,
        RotationState.REPROVISION_SENT,
        RotationState.IDLE,
    ]
    assert done.state is RotationState.IDLE
    assert done.current_thumbprint == thumb(dev.cert) != thumb(old_cert)
    assert done.request_id is None
    assert done.new_serial is None
    # DPS: the new certificate went to the free slot, the old one retired after confirmation
    enr = world.enrollments.individual["dev-1"]
    assert enr.primary is None
    assert enr.secondary is not None
    assert enr.secondary.thumbprint_sha256 == thumb(dev.cert)
    # hub identity holds only the new thumbprint
    ident = world.registry.devices["dev-1"]
    assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {thumb(dev.cert), None}
    # ledger
    statuses = {c.thumbprint_sha256: c.status for c in world.ledger.list_for_device("dev-1")}
    assert statuses == {
        thumb(old_cert): CertificateStatus.SUPERSEDED,
        thumb(dev.cert): CertificateStatus.ACTIVE,
    }
    # desired cleaned up, events out
    assert "renewal" not in world.registry.twins["dev-1"].desired.get("x509", {})
    assert "issued" not in world.registry.twins["dev-1"].desired.get("x509", {})
    kinds = [e.event_type for e in world.events.events]
    assert kinds == ["CertificateIssued", "RotationCompleted"]
    assert world.events.events[1].data["requestId"] == started.request_id


def test_slots_alternate_over_rotations(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    slots = []
    for _ in range(3):
        rotate(svc, dev)
        enr = world.enrollments.individual["dev-1"]
        slot = "primary" if enr.primary is not None else "secondary"
        held = enr.primary if enr.primary is not None else enr.secondary
        assert held is not None
        assert held.thumbprint_sha256 == thumb(dev.cert)
        slots.append(slot)
    assert slots == ["secondary", "primary", "secondary"]
    assert len(world.ledger.list_for_device("dev-1")) == 4


def test_new_certificate_sits_beside_the_old_until_confirmed(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    enr = world.enrollments.individual["dev-1"]
    assert enr.primary is not None
    assert enr.secondary is not None
    assert enr.primary.thumbprint_sha256 == thumb(dev.cert)
    assert enr.secondary.thumbprint_sha256 == rec.new_thumbprint
    # the hub identity is DPS's to change: the registration with the new certificate puts
    # it there (docs/performance.md); until then the identity holds the current one
    ident = world.registry.devices["dev-1"]
    assert ident.primary_thumbprint == thumb(dev.cert)
    assert ident.secondary_thumbprint is None
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    assert world.registry.devices["dev-1"].primary_thumbprint == rec.new_thumbprint


def test_which_calls_a_rotation_leaves_out(world: World) -> None:
    from shared.domain.rotation.economy import (
        enrollment_cleanup_after_confirmation,
        hub_cleanup_after_confirmation,
        hub_write_before_delivery,
    )

    def rec(reason: Trigger, slot: str | None = None) -> RotationRecord:
        return RotationRecord("dev-1", reason=reason.value, slot=slot)

    assert hub_write_before_delivery(rec(Trigger.ALLOW))
    assert not hub_write_before_delivery(rec(Trigger.CA_ROLL))
    assert hub_cleanup_after_confirmation(rec(Trigger.COMPROMISE))
    assert not hub_cleanup_after_confirmation(rec(Trigger.EXPIRING))
    assert not enrollment_cleanup_after_confirmation(rec(Trigger.MANUAL, "group"))
    assert enrollment_cleanup_after_confirmation(rec(Trigger.MANUAL, "primary"))


def test_due_certificate_starts_a_renewal_from_the_twin(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    assert adopt(svc, dev).state is RotationState.IDLE
    assert dev.renewal_request() is None
    world.clock.advance(25 * DAY)  # past 2/3 +- 5 % of 30 days
    rec = adopt(svc, dev)
    assert rec.state is RotationState.CSR_REQUESTED
    assert rec.reason == "expiring"
    assert dev.renewal_request() == rec.request_id


def test_group_member_enrollment_untouched(world: World) -> None:
    dev = world.add_device("dev-g", group=True, auth=AuthType.CERTIFICATE_AUTHORITY)
    svc = world.service()
    adopt(svc, dev)
    done = rotate(svc, dev)
    assert done.state is RotationState.IDLE
    assert world.enrollments.individual == {}
    assert world.enrollments.writes == 0
    ident = world.registry.devices["dev-g"]
    assert ident.auth_type is AuthType.CERTIFICATE_AUTHORITY
    assert ident.primary_thumbprint is None


def test_compromise_removes_old_slot_at_once_and_revokes_on_completion(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    old = dev.cert
    svc.start_renewal(StartRenewal("dev-1", Trigger.COMPROMISE, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    enr = world.enrollments.individual["dev-1"]
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    assert held == {rec.new_thumbprint}
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    old_rec = world.ledger.find_by_thumbprint(thumb(old))
    assert old_rec is not None
    assert old_rec.status is CertificateStatus.REVOKED
    assert old_rec.revocation_reason is RevocationReason.KEY_COMPROMISE
    assert "crl/issuing.crl" in " ".join(world.crl.objects) or world.crl.objects


def test_device_failure_fails_rotation_and_sweep_retries(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    first = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("DPS said no")))
    assert rec.state is RotationState.FAILED
    assert rec.last_error is not None
    assert "DPS said no" in rec.last_error
    assert [e.event_type for e in world.events.events] == ["RotationFailed"]
    plan = svc.sweep()
    assert plan.failed == ["dev-1"]
    result = svc.process_batch(parse_rotate_message(world.queue.receive()[0]))
    assert result.started == ["dev-1"]
    again = world.state.get("dev-1")
    assert again is not None
    assert again.state is RotationState.CSR_REQUESTED
    assert again.request_id != first.request_id
    assert again.reason == "manual"


def test_rejected_csr_fails_without_issuing(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    other = Device(world, "someone-else")
    bad = {"csr": {"requestId": started.request_id, "pem": other.new_csr("x")}}
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", bad))
    assert rec.state is RotationState.FAILED
    assert rec.last_error is not None
    assert rec.last_error.startswith("subject_mismatch")
    assert len(world.ledger.list_for_device("dev-1")) == 1


def test_a_csr_over_the_policy_limit_fails_its_request_unbound(world: World) -> None:
    """Found on the twin by the driver (the trigger refuses it at parse): the request
    fails with csr_too_large, the CSR is never written into the record."""
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    pem = dev.new_csr(started.request_id or "")
    big = pem.replace("-----END", "\n" * 9000 + "-----END")
    answer = {"csr": {"requestId": started.request_id, "pem": big}}
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.state is RotationState.FAILED
    assert (rec.last_error or "").startswith("csr_too_large")
    assert rec.csr_pem is None
    assert len(world.ledger.list_for_device("dev-1")) == 1


def test_start_renewal_coalesces_and_refuses(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    first = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    second = svc.start_renewal(StartRenewal("dev-1", Trigger.EXPIRING, "system:sweep"))
    assert second.request_id == first.request_id
    assert second.reason == "manual"
    with pytest.raises(NotFoundError):
        svc.start_renewal(StartRenewal("ghost", Trigger.MANUAL, "op"))


def test_status_view_is_json(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    rotate(svc, dev)
    view = svc.status(Status("dev-1")).to_dict()
    text = json.dumps(view)
    assert thumb(dev.cert) in text
    assert view["rotation"]["state"] == "idle"
    assert [c["status"] for c in view["certificates"]] == ["superseded", "active"]
    assert view["enrollment"]["secondary"]["thumbprint"] == thumb(dev.cert)
    assert view["hubIdentity"]["status"] == "enabled"
    assert any(a["action"] == "rotation_complete" for a in view["audit"])
    with pytest.raises(NotFoundError):
        svc.status(Status("ghost"))


@pytest.mark.parametrize(
    "report",
    [
        {"thumbprint": "zz"},
        {"thumbprint": "a" * 64, "serialNumber": "1", "notBefore": "x", "notAfter": "y"},
        {"csr": {"requestId": "r1", "pem": "not a csr"}},
        {"csr": "text"},
        {"renewal": {"requestId": "r1", "status": "maybe"}},
        {"renewal": {"requestId": "", "status": "installed"}},
    ],
)
def test_bad_report_is_rejected_and_changes_nothing(world: World, report: dict[str, Any]) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    before = adopt(svc, dev)
    with pytest.raises(InvalidRequestError):
        svc.on_twin_reported(TwinReported.parse("dev-1", report))
    after = world.state.get("dev-1")
    assert after is not None
    assert after.etag == before.etag


def test_offline_device_backs_off_then_completes_when_back(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    world.registry.online.discard("dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.state is RotationState.DELIVERED
    assert rec.attempts == 1
    assert rec.deadline is not None
    first_wait = rec.deadline - world.clock.now()
    assert timedelta(minutes=4) < first_wait <= timedelta(minutes=5)
    rec = svc.advance("dev-1")
    assert rec.state is RotationState.DELIVERED
    assert rec.attempts == 2
    assert rec.deadline is not None
    assert rec.deadline - world.clock.now() > first_wait
    # the sweep lists it once the next try is due
    assert "dev-1" not in svc.sweep(Sweep(dry_run=True)).stuck
    world.clock.advance(3600)
    assert "dev-1" in svc.sweep(Sweep(dry_run=True)).stuck
    world.registry.online.add("dev-1")
    rec2 = svc.on_device_connected(DeviceConnected("dev-1", world.clock.now()))
    assert rec2 is not None
    assert rec2.state is RotationState.REPROVISION_SENT
    done = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    assert done.state is RotationState.IDLE


def test_bulk_reprovision_uses_one_job(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2)
    svc, devs = _bulk_batch(world, 3)
    result = _rotate(svc, devs)
    assert result.reprovision_job is not None
    condition, method, _payload = world.registry.jobs[result.reprovision_job]
    assert method == "reprovision"
    assert condition == "deviceId IN ['dev-0','dev-1','dev-2']"
    for dev in devs:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.REPROVISION_SENT


def _bulk_batch(world: World, n: int) -> tuple[RotationService, list[Device]]:
    devs = [world.add_device(f"dev-{i}") for i in range(n)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
        svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
        answer = dev.answer()
        assert answer is not None
        world.registry.online.discard(dev.device_id)
        svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
        world.registry.online.add(dev.device_id)
    return svc, devs


def _rotate(svc: RotationService, devs: list[Device]) -> Any:
    return svc.process_batch(
        parse_rotate_message(
            {"kind": "rotate", "deviceIds": [d.device_id for d in devs], "reason": "expiring"}
        )
    )


def test_bulk_reprovision_never_exceeds_the_tiers_concurrent_jobs(world: World) -> None:
    """S1 runs one job at a time: with one already running, each device gets its own
    reprovision method instead of a second job."""
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=1)
    svc, devs = _bulk_batch(world, 3)
    world.registry.schedule_method_job("someone-elses", "deviceId IN ['x']", "ping", {})
    result = _rotate(svc, devs)
    assert result.reprovision_job is None
    assert list(world.registry.jobs) == ["someone-elses"]
    assert sorted(d for d, m, _ in world.registry.methods if m == "reprovision") == [
        "dev-0",
        "dev-1",
        "dev-2",
    ]
    for dev in devs:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.REPROVISION_SENT


def test_a_hub_refusing_one_more_job_falls_back_to_direct_methods(world: World) -> None:
    """Another worker took the last job place between the count and the schedule: the
    hub's 429004 is not waited out, the devices are reached one by one."""
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=5)
    svc, devs = _bulk_batch(world, 2)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise JobQuotaExceededError("429004 ThrottlingMaxActiveJobCountExceeded", 10)

    world.registry.schedule_method_job = refuse  # type: ignore[method-assign]
    result = _rotate(svc, devs)
    assert result.reprovision_job is None
    assert sorted(d for d, m, _ in world.registry.methods if m == "reprovision") == [
        "dev-0",
        "dev-1",
    ]


def test_a_basic_tier_hub_gets_no_job(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=0)
    svc, devs = _bulk_batch(world, 2)
    result = _rotate(svc, devs)
    assert result.reprovision_job is None
    assert world.registry.jobs == {}
    assert len([m for _, m, _ in world.registry.methods if m == "reprovision"]) == 2


@pytest.mark.parametrize(
    ("sku", "jobs"), [("F1", 1), ("S1", 1), ("s2", 5), ("S3", 10), ("B1", 0)]
)
def test_the_tier_sets_the_concurrent_jobs(sku: str, jobs: int) -> None:
    from shared.domain.policy import RotationPolicy
    from shared.settings import Settings

    settings = Settings.from_env({"CERTROLL_HUB_TIER": sku})
    assert RotationPolicy.from_settings(settings).max_concurrent_jobs == jobs


def test_an_unknown_tier_is_refused() -> None:
    from shared.domain.policy import concurrent_jobs_of_tier

    with pytest.raises(ValueError, match="X9"):
        concurrent_jobs_of_tier("X9")


def test_disallowed_device_refuses_renewal(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.disallow(Disallow("dev-1", "stolen", "sec@example.com"))
    with pytest.raises(DeviceDisallowedError):
        svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))


def test_a_rotation_reads_back_nothing_it_just_wrote(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    calls: list[str] = []
    for name in ("get", "set_status", "set_statuses", "find_by_csr", "list_for_device"):
        inner = getattr(world.ledger, name)

        def counted(*args: object, _name: str = name, _inner: Any = inner) -> Any:
            calls.append(_name)
            return _inner(*args)

        setattr(world.ledger, name, counted)
    done = rotate(svc, dev)
    assert done.state is RotationState.IDLE
    # the issuance lists the device's certificates once (the key check and the
    # idempotent look-up in one); the finish lists them once and changes them in one call
    assert sorted(calls) == ["list_for_device", "list_for_device", "set_statuses"]
    statuses = [c.status for c in world.ledger.list_for_device("dev-1")]
    assert statuses == [CertificateStatus.SUPERSEDED, CertificateStatus.ACTIVE]


def test_the_worker_reads_a_record_once_to_start_it(world: World) -> None:
    devs = [world.add_device(f"dev-{i}") for i in range(3)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
    reads: list[str] = []
    inner = world.state.get

    def get(device_id: str) -> RotationRecord | None:
        reads.append(device_id)
        return inner(device_id)

    world.state.get = get  # type: ignore[method-assign]
    result = svc.process_batch(
        parse_rotate_message(
            {"kind": "rotate", "deviceIds": [d.device_id for d in devs], "reason": "expiring"}
        )
    )
    assert result.started == ["dev-0", "dev-1", "dev-2"]
    assert sorted(reads) == ["dev-0", "dev-1", "dev-2"]


def test_the_worker_decides_again_when_its_read_went_stale(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    inner = world.state.get
    raced: list[RotationRecord] = []

    def get(device_id: str) -> RotationRecord | None:
        rec = inner(device_id)
        if not raced:  # an operator's renewal lands between the worker's read and write
            world.state.get = inner  # type: ignore[method-assign]
            raced.append(svc.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "op")))
        return rec

    world.state.get = get  # type: ignore[method-assign]
    result = svc.process_batch(
        parse_rotate_message({"kind": "rotate", "deviceIds": ["dev-1"], "reason": "expiring"})
    )
    assert raced
    assert result.started == ["dev-1"]
    rec = inner("dev-1")
    assert rec is not None
    assert rec.state is RotationState.CSR_REQUESTED
    assert rec.request_id == raced[0].request_id  # coalesced with the renewal that won
    assert rec.reason == "manual"


def test_no_rotation_waits_on_device_connected_alone(world: World) -> None:
    """DeviceConnected is a hint (late, periodic, only for devices that subscribed to C2D
    or sent telemetry): when it never comes, the sweep finds the delivered record once its
    next try is due and the queue worker finishes the rotation."""
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    world.registry.online.discard("dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.state is RotationState.DELIVERED
    world.registry.online.add("dev-1")  # back, but no DeviceConnected arrives
    world.clock.advance(3600)
    plan = svc.sweep(Sweep())
    assert "dev-1" in plan.stuck
    for message in world.queue.receive(100):
        svc.process_batch(parse_rotate_message(message))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    done = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    assert done.state is RotationState.IDLE


def test_stale_sweep_message_after_the_rotation_finished_issues_nothing(world: World) -> None:
    """The sweep finds the device due and enqueues it; the device's own twin report
    rotates it before the message is handled (or the message comes back after a crash).
    The late message must not open a second rotation (found by the soak: a second
    certificate for one renewal)."""
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    world.clock.advance(29 * DAY)  # the 30-day certificate is due
    plan = svc.sweep()
    assert "dev-1" in plan.device_ids()
    message = world.queue.receive()[0]
    world.clock.advance(60)
    done = rotate(svc, dev, Trigger.EXPIRING)
    assert done.state is RotationState.IDLE
    world.clock.advance(60)
    result = svc.process_batch(parse_rotate_message(message))
    assert result.skipped == {"dev-1": "not-due"}
    assert result.started == []
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.IDLE
    renewals = [r for r in world.ledger.list_for_device("dev-1") if r.trigger == "expiring"]
    assert len(renewals) == 1


def test_sweep_message_for_a_device_still_due_starts_its_rotation(world: World) -> None:
    """The guard above skips only devices renewed since: a device whose record changed
    after the sweep (a twin report) but whose certificate is still due is rotated."""
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    world.clock.advance(29 * DAY)
    svc.sweep()
    message = world.queue.receive()[0]
    world.clock.advance(60)
    rec = world.state.get("dev-1")
    assert rec is not None
    world.state.put(rec)  # touched after the sweep, still due
    result = svc.process_batch(parse_rotate_message(message))
    assert result.started == ["dev-1"]


def test_one_devices_service_error_does_not_hold_up_its_batch(world: World) -> None:
    """A 500 for one device lets the rest of the batch go on; the batch then fails so the
    message comes back for that device (found by the soak: one transient error held up
    a whole batch, and after five tries poisoned it)."""
    devs = [world.add_device(f"dev-{i}") for i in range(3)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
    inner = world.registry.patch_desired
    failed: list[str] = []

    def patch_desired(device_id: str, *args: Any, **kwargs: Any) -> Any:
        if device_id == "dev-1" and not failed:
            failed.append(device_id)
            raise ServiceError("IoT Hub patch_desired dev-1: HTTP 500", status=500)
        return inner(device_id, *args, **kwargs)

    world.registry.patch_desired = patch_desired  # type: ignore[method-assign]
    message = {"kind": "rotate", "deviceIds": [d.device_id for d in devs], "reason": "manual"}
    with pytest.raises(ServiceError):
        svc.process_batch(parse_rotate_message(message))
    for dev in (devs[0], devs[2]):
        assert dev.renewal_request() is not None  # asked in the first delivery
    assert devs[1].renewal_request() is None
    again = svc.process_batch(parse_rotate_message(message))
    assert again.errors == {}
    assert devs[1].renewal_request() is not None
