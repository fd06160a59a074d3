"""campaigns_api: start, list, status, pause, resume and abort a campaign through the
registered function, on the campaign engine over in-memory storage; every refusal is
audited and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from shared.adapters.memory import MemoryCampaignStore
from shared.bootstrap import Services, override_services
from shared.domain.campaign import CampaignState
from shared.domain.campaign_engine import CampaignService
from shared.domain.messages import CampaignStep, parse_work_queue_message
from shared.settings import Settings
from tests.functions.fakes import user_function
from tests.support.tokens import actor_of, auth_settings, token
from tests.unit.rotation.fakes import World

api = user_function("campaigns_api")
ALICE = actor_of("alice@example.com")
QUERY = "SELECT * FROM devices WHERE tags.fleet = 'north'"


class Env:
    def __init__(self) -> None:
        self.world = World()
        self.store = MemoryCampaignStore()
        self.service = CampaignService(
            self.store,
            self.world.registry,
            self.world.queue,
            self.world.events,
            self.world.clock,
            audit=self.world.audit,
        )

    def queued(self) -> list[Any]:
        return [parse_work_queue_message(m) for m in self.world.queue.receive(32)]


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    settings = Settings.from_env({"CERTROLL_STORAGE": "memory", **auth_settings()})
    with override_services(Services(settings, campaign_service=e.service, audit=e.world.audit)):
        yield e


def request(
    method: str,
    cid: str | None = None,
    action: str | None = None,
    body: Any = None,
    *,
    bearer: str | None = None,
    params: dict[str, str] | None = None,
) -> func.HttpRequest:
    route = {k: v for k, v in (("id", cid), ("action", action)) if v is not None}
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    path = "/".join(p for p in ("campaigns", cid, action) if p)
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{path}",
        headers={"Authorization": f"Bearer {bearer}"} if bearer else {},
        params=params or {},
        route_params=route,
        body=raw,
    )


def start(env: Env, **body: Any) -> dict[str, Any]:
    resp = api(request("POST", body={"query": QUERY, **body}, bearer=token()))
    assert resp.status_code == 201, resp.get_body()
    doc: dict[str, Any] = json.loads(resp.get_body())
    assert resp.headers["Location"] == f"campaigns/{doc['campaign_id']}"
    return doc


def test_start_records_the_campaign_for_the_caller_and_queues_its_first_run(env: Env) -> None:
    doc = start(
        env,
        reason="ca-roll",
        id="north-1",
        devicesExpected=40,
        abortCriteria={"minExecuted": 20, "failurePercentage": 5},
    )
    assert doc["campaign_id"] == "north-1"
    assert doc["state"] == "running"
    assert doc["reason"] == "ca-roll"
    assert doc["created_by"] == ALICE
    assert doc["devices_expected"] == 40
    assert doc["progress"]["total"] == 40
    stored = env.store.get("north-1")
    assert stored.query == QUERY
    assert (stored.abort_criteria.min_executed, stored.abort_criteria.failure_percentage) == (
        20,
        5.0,
    )
    assert env.queued() == [CampaignStep("north-1")]
    starts = [e for e in env.world.audit.list() if e.action == "campaign_start"]
    assert [e.actor for e in starts] == [ALICE]


def test_status_and_list_report_progress(env: Env) -> None:
    start(env, id="north-1")
    start(env, id="north-2")
    resp = api(request("GET", "north-1", bearer=token()))
    assert resp.status_code == 200
    assert json.loads(resp.get_body())["campaign_id"] == "north-1"
    env.service.pause("north-2", "cli:bob")
    listed = json.loads(api(request("GET", bearer=token())).get_body())
    assert sorted(c["campaign_id"] for c in listed) == ["north-1", "north-2"]
    paused = api(request("GET", bearer=token(), params={"state": "paused"}))
    assert [c["campaign_id"] for c in json.loads(paused.get_body())] == ["north-2"]


def test_pause_resume_abort(env: Env) -> None:
    start(env, id="c1")
    env.queued()
    resp = api(request("POST", "c1", "pause", {"note": "change freeze"}, bearer=token()))
    assert resp.status_code == 200
    assert json.loads(resp.get_body())["state"] == "paused"
    assert env.store.get("c1").state is CampaignState.PAUSED
    resp = api(request("POST", "c1", "resume", bearer=token()))
    assert json.loads(resp.get_body())["state"] == "running"
    assert env.queued() == [CampaignStep("c1")]  # the run goes on from its checkpoint
    resp = api(request("POST", "c1", "abort", {"note": "wrong query"}, bearer=token()))
    assert resp.status_code == 200
    assert env.store.get("c1").state is CampaignState.ABORTED
    aborts = [e for e in env.world.audit.list() if e.action == "campaign_abort"]
    assert [(e.actor, e.detail.get("note")) for e in aborts] == [(ALICE, "wrong query")]


def test_abort_without_a_note_is_refused_and_changes_nothing(env: Env) -> None:
    start(env, id="c1")
    resp = api(request("POST", "c1", "abort", {}, bearer=token()))
    assert resp.status_code == 400
    assert json.loads(resp.get_body())["error"]["code"] == "note_required"
    assert env.store.get("c1").state is CampaignState.RUNNING
    rejected = [e for e in env.world.audit.list() if e.outcome == "rejected"]
    assert [(e.action, e.detail["code"]) for e in rejected] == [
        ("api_campaign_abort", "note_required")
    ]


def test_an_unknown_campaign_is_404_and_a_final_one_409(env: Env) -> None:
    assert api(request("GET", "nope", bearer=token())).status_code == 404
    assert api(request("POST", "nope", "pause", bearer=token())).status_code == 404
    start(env, id="c1")
    api(request("POST", "c1", "abort", {"note": "x"}, bearer=token()))
    resp = api(request("POST", "c1", "resume", bearer=token()))
    assert resp.status_code == 409
    assert env.store.get("c1").state is CampaignState.ABORTED


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (None, "body_required"),
        (b"[1]", "malformed_json"),
        ({}, "campaign_query_invalid"),
        ({"query": "  "}, "campaign_query_invalid"),
        ({"query": QUERY, "reason": "expiring"}, "campaign_reason_invalid"),
        ({"query": QUERY, "id": "no spaces"}, "campaign_id_invalid"),
        ({"query": QUERY, "devicesExpected": -1}, "devicesExpected_invalid"),
        ({"query": QUERY, "devicesExpected": True}, "devicesExpected_invalid"),
        ({"query": QUERY, "abortCriteria": {"failurePercentage": 0}}, "failurePercentage_invalid"),
        ({"query": QUERY, "abortCriteria": {"minExecuted": 0}}, "minExecuted_invalid"),
        ({"query": QUERY, "abortCriteria": {"other": 1}}, "unknown_field"),
        ({"query": QUERY, "owner": "me"}, "unknown_field"),
        ({"query": "SELECT \ud800"}, "query_invalid"),
    ],
)
def test_a_bad_start_is_refused_audited_and_starts_nothing(env: Env, body: Any, code: str) -> None:
    resp = api(request("POST", body=body, bearer=token()))
    assert resp.status_code == 400
    assert json.loads(resp.get_body())["error"]["code"] == code
    assert env.store.list(None) == []
    assert env.queued() == []
    (entry,) = env.world.audit.list()
    assert (entry.action, entry.outcome, entry.actor) == ("api_campaign_start", "rejected", ALICE)


def test_routes_and_methods_outside_the_api(env: Env) -> None:
    start(env, id="c1")
    assert api(request("POST", "c1", "explode", bearer=token())).status_code == 404
    resp = api(request("GET", "c1", "pause", bearer=token()))
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST"
    assert api(request("POST", "c1", bearer=token())).status_code == 405
    assert env.store.get("c1").state is CampaignState.RUNNING


def test_without_a_token_or_the_role_nothing_happens(env: Env) -> None:
    assert api(request("POST", body={"query": QUERY})).status_code == 401
    assert api(request("POST", body={"query": QUERY}, bearer=token(roles=()))).status_code == 403
    assert api(request("GET", bearer=token(roles=()))).status_code == 403
    assert env.store.list(None) == []
    outcomes = {(e.action, e.outcome) for e in env.world.audit.list()}
    assert outcomes == {("api_campaign_start", "rejected"), ("api_campaign_list", "rejected")}
