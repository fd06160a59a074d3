"""The campaign store's contract, against the in-memory fake and Azurite: ETag-checked
writes, checkpoints surviving a restart (a new store instance), pause/resume and the
abort criteria carried through the store."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain import campaign as cm
from shared.domain.campaign import (
    AbortCriteria,
    Campaign,
    CampaignState,
    EnrollmentPassProgress,
)
from shared.domain.errors import ConcurrencyError, ConflictError, NotFoundError
from shared.domain.model import CertificateSlot, IndividualEnrollment, ProvisioningStatus
from shared.ports import CampaignStore

T0 = datetime(2026, 12, 6, 8, 0, 0, 250000, tzinfo=UTC)
QUERY = "SELECT * FROM devices WHERE tags.fleet = 'north'"


def make(campaign_id: str = "ca-roll-2026-12", **kw: object) -> Campaign:
    args: dict[str, object] = {
        "at": T0,
        "by": "cli:ops",
        "abort_criteria": AbortCriteria(min_executed=10, failure_percentage=20.0),
        "devices_expected": 2500,
        "rate_per_min": 900.0,
    }
    args.update(kw)
    return cm.new_campaign(campaign_id, QUERY, "ca-roll", **args)  # type: ignore[arg-type]


def test_put_then_get_round_trips_every_field(campaign_store: CampaignStore) -> None:
    c = make()
    c = cm.record_page(c, enqueued=1000, continuation="eyJjIjoxMDAwfQ==", at=T0)
    c = cm.pause(c, at=T0 + timedelta(minutes=1), note="maintenance window")
    stored = campaign_store.put(c)
    assert stored.etag
    fetched = campaign_store.get(c.campaign_id)
    assert fetched.etag == stored.etag
    assert dataclasses.replace(fetched, etag=None) == dataclasses.replace(c, etag=None)
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert isinstance(fetched.state, CampaignState)


def test_optional_fields_may_be_absent(campaign_store: CampaignStore) -> None:
    c = make("plain", devices_expected=None, rate_per_min=None, abort_criteria=None)
    campaign_store.put(c)
    fetched = campaign_store.get("plain")
    assert fetched.devices_expected is None
    assert fetched.rate_per_min is None
    assert fetched.checkpoint.continuation is None
    assert fetched.note is None
    assert fetched.abort_criteria == AbortCriteria()


def test_get_of_an_unknown_campaign_is_not_found(campaign_store: CampaignStore) -> None:
    with pytest.raises(NotFoundError):
        campaign_store.get("nope")


def test_create_of_an_existing_campaign_conflicts(campaign_store: CampaignStore) -> None:
    campaign_store.put(make())
    with pytest.raises(ConflictError):
        campaign_store.put(make())


def test_a_stale_etag_is_refused(campaign_store: CampaignStore) -> None:
    first = campaign_store.put(make())
    second = campaign_store.put(cm.record_page(first, enqueued=5, continuation="t1", at=T0))
    assert second.etag != first.etag
    with pytest.raises(ConcurrencyError):
        campaign_store.put(cm.record_page(first, enqueued=7, continuation="t9", at=T0))
    assert campaign_store.get(first.campaign_id).checkpoint.enqueued == 5


def test_list_filters_by_state_newest_first(campaign_store: CampaignStore) -> None:
    campaign_store.put(make("older", at=T0))
    newer = campaign_store.put(make("newer", at=T0 + timedelta(hours=1)))
    campaign_store.put(cm.pause(newer, at=T0 + timedelta(hours=2)))
    assert [c.campaign_id for c in campaign_store.list()] == ["newer", "older"]
    assert [c.campaign_id for c in campaign_store.list({CampaignState.RUNNING})] == ["older"]
    assert [
        c.campaign_id for c in campaign_store.list({CampaignState.PAUSED, CampaignState.COMPLETED})
    ] == ["newer"]
    assert campaign_store.list(set()) == []


def test_update_retries_a_concurrent_writer_and_loses_no_count(
    campaign_store: CampaignStore,
) -> None:
    """Workers counting outcomes at once: every count lands (ETag retries)."""
    c = campaign_store.put(make(abort_criteria=AbortCriteria(min_executed=1000)))
    campaign_store.update(
        c.campaign_id, lambda x: cm.record_page(x, enqueued=40, continuation=None, at=T0)
    )
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                campaign_store.update(
                    c.campaign_id,
                    lambda x: cm.record_outcomes(x, completed=1, at=T0),
                    attempts=50,
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert campaign_store.get(c.campaign_id).checkpoint.completed == 20


def test_update_that_changes_nothing_writes_nothing(campaign_store: CampaignStore) -> None:
    stored = campaign_store.put(make())
    same = campaign_store.update(stored.campaign_id, lambda x: x)
    assert same.etag == stored.etag


def test_pause_and_resume_across_a_restart(
    campaign_store_factory: Callable[[], CampaignStore],
) -> None:
    """A runner pages, pauses; the process ends; a new store instance reads the checkpoint,
    resumes at the saved continuation token and finishes without re-reading a page."""
    pages = {None: ("t1", 3), "t1": ("t2", 3), "t2": (None, 2)}  # token -> (next, devices)
    read: list[str | None] = []

    def step(store: CampaignStore, cid: str) -> Campaign:
        c = store.get(cid)
        token = c.checkpoint.continuation
        nxt, n = pages[token]
        out = store.update(cid, lambda x: cm.record_page(x, enqueued=n, continuation=nxt, at=T0))
        read.append(token)
        return out

    first = campaign_store_factory()
    first.put(make("resumable", devices_expected=8))
    step(first, "resumable")
    first.update("resumable", lambda x: cm.pause(x, at=T0, note="operator"))
    with pytest.raises(ConflictError):
        step(first, "resumable")  # a paused campaign does not advance
    del first

    second = campaign_store_factory()
    c = second.get("resumable")
    assert c.state is CampaignState.PAUSED
    assert c.checkpoint.continuation == "t1"
    assert c.checkpoint.enqueued == 3
    second.update("resumable", lambda x: cm.resume(x, at=T0))
    step(second, "resumable")
    done = step(second, "resumable")
    assert read == [None, "t1", "t2"]  # each page enqueued once
    assert done.checkpoint.query_done
    assert done.checkpoint.enqueued == 8
    assert done.state is CampaignState.RUNNING  # outcomes still to count
    finished = second.update("resumable", lambda x: cm.record_outcomes(x, completed=8, at=T0))
    assert finished.state is CampaignState.COMPLETED
    assert cm.progress(finished).fraction == 1.0


def test_abort_criteria_trip_through_the_store(campaign_store: CampaignStore) -> None:
    c = campaign_store.put(make())  # at least 10 executed, abort at >= 20 % failed
    cid = c.campaign_id
    campaign_store.update(cid, lambda x: cm.record_page(x, enqueued=100, continuation="t", at=T0))
    campaign_store.update(cid, lambda x: cm.record_outcomes(x, failed=5, at=T0))
    assert campaign_store.get(cid).state is CampaignState.RUNNING  # 5 executed < 10
    campaign_store.update(cid, lambda x: cm.record_outcomes(x, completed=35, at=T0))
    assert campaign_store.get(cid).state is CampaignState.RUNNING  # 5 of 40: 12.5 %
    campaign_store.update(cid, lambda x: cm.record_outcomes(x, failed=6, at=T0))
    aborted = campaign_store.get(cid)
    assert aborted.state is CampaignState.ABORTED  # 11 of 46: 23.9 % >= 20 %
    assert aborted.note is not None
    assert "11 of 46" in aborted.note
    with pytest.raises(ConflictError):
        campaign_store.update(
            cid, lambda x: cm.record_page(x, enqueued=10, continuation="u", at=T0)
        )
    # rotations already enqueued still end and are counted; the state stays aborted
    after = campaign_store.update(cid, lambda x: cm.record_outcomes(x, completed=3, at=T0))
    assert after.state is CampaignState.ABORTED
    assert after.checkpoint.completed == 38


# --------------------------------------------------------------------------- devices


def test_devices_join_once_and_keep_their_outcome(
    campaign_store_factory: Callable[[], CampaignStore],
) -> None:
    store = campaign_store_factory()
    store.put(make("members"))
    ids = [f"dev-{i:03d}" for i in range(150)] + ["odd'id:1"]
    assert store.add_devices("members", ids) == 151
    assert store.device_outcome("members", "dev-000") == cm.PENDING
    assert store.device_outcome("members", "not-a-member") is None
    assert store.device_outcome("other", "dev-000") is None
    assert store.record_outcome("members", "dev-001", cm.COMPLETED)
    assert store.record_outcome("members", "odd'id:1", cm.FAILED)
    # a page read again after a crash: the rows stay as they are
    restarted = campaign_store_factory()
    assert restarted.add_devices("members", [*ids[:120], "dev-new"]) == 1
    assert restarted.device_outcome("members", "dev-001") == cm.COMPLETED
    # a redelivered rotation counts nothing; a non-member neither
    assert not restarted.record_outcome("members", "dev-001", cm.COMPLETED)
    assert not restarted.record_outcome("members", "dev-001", cm.FAILED)
    assert not restarted.record_outcome("members", "stranger", cm.COMPLETED)
    assert restarted.record_outcome("members", "dev-002", cm.SKIPPED)
    assert restarted.count_outcomes("members") == {
        cm.PENDING: 149,
        cm.COMPLETED: 1,
        cm.FAILED: 1,
        cm.SKIPPED: 1,
    }
    # device rows are not campaigns
    assert [c.campaign_id for c in restarted.list()] == ["members"]
    with pytest.raises(ValueError, match="unknown outcome"):
        restarted.record_outcome("members", "dev-003", "maybe")


def test_outcomes_set_at_once_are_set_once(campaign_store: CampaignStore) -> None:
    campaign_store.put(make("race"))
    campaign_store.add_devices("race", ["dev-1"])
    wins: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda: wins.append(campaign_store.record_outcome("race", "dev-1", cm.COMPLETED))
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def _enrollment(rid: str, etag: str) -> IndividualEnrollment:
    return IndividualEnrollment(
        registration_id=rid,
        device_id=rid,
        primary=CertificateSlot(
            thumbprint_sha256="ab" * 32, not_after=T0 + timedelta(days=30), subject=f"CN={rid}"
        ),
        secondary=None,
        provisioning_status=ProvisioningStatus.ENABLED,
        iot_hub_host_name="hub.example",
        etag=etag,
        document={
            "registrationId": rid,
            "initialTwin": {"tags": {"site": "north"}},
            "attestation": {"type": "x509", "x509": {"clientCertificates": {}}},
        },
    )


def test_the_enrollment_pass_keeps_each_enrollment_with_its_etag_and_document(
    campaign_store: CampaignStore,
) -> None:
    assert campaign_store.enrollment_pass("c1") is None
    first = [_enrollment(f"dev-{i:03}", f"etag-{i}") for i in range(150)]
    campaign_store.put_enrollments(
        "c1", first, EnrollmentPassProgress("token-1", done=False, pages=1, at=T0)
    )
    progress = campaign_store.enrollment_pass("c1")
    assert progress == EnrollmentPassProgress("token-1", done=False, pages=1, at=T0)
    campaign_store.put_enrollments(
        "c1",
        [_enrollment("dev-000", "etag-new"), _enrollment("a/b~c", "e")],
        EnrollmentPassProgress(None, done=True, pages=2, at=T0 + timedelta(seconds=5)),
    )
    done = campaign_store.enrollment_pass("c1")
    assert done is not None
    assert done.done
    assert done.continuation is None
    assert done.pages == 2
    got = campaign_store.enrollment("c1", "dev-149")
    assert got == first[149]
    assert got is not None
    assert got.document == first[149].document  # compare=False on the field: check it
    assert got.etag == "etag-149"
    replaced = campaign_store.enrollment("c1", "dev-000")
    assert replaced is not None
    assert replaced.etag == "etag-new"
    assert campaign_store.enrollment("c1", "a/b~c") is not None
    assert campaign_store.enrollment("c1", "dev-999") is None
    assert campaign_store.enrollment("c2", "dev-001") is None  # per campaign
    assert [c.campaign_id for c in campaign_store.list()] == []  # no campaign row made
