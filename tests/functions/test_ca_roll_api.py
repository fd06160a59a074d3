"""ca_roll_api: the CA roll's steps and record through the registered function."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from functions.parsing.ca_roll import CaRollWork
from functions.worker import handle_work_message, run_ca_roll_step
from shared.adapters.memory import MemoryAuditLog, MemoryWorkQueue
from shared.bootstrap import Services, override_services
from shared.domain.ca_roll import CaRollRecord, CaRollStepError, RollState, RollStep
from shared.domain.errors import ServiceError
from shared.pki.ca_roll import RollResult
from shared.settings import Settings
from tests.functions.fakes import user_function
from tests.support.tokens import actor_of, auth_settings, token

api = user_function("ca_roll_api")
ALICE = actor_of("alice@example.com")


class FakeRoll:
    def __init__(self) -> None:
        self.calls: list[tuple[RollStep, str, dict[str, Any]]] = []
        self.refuse: RollStep | None = None

    def status(self) -> CaRollRecord:
        return CaRollRecord()

    def campaign(self, record: CaRollRecord) -> None:
        return None

    def run(self, step: RollStep, actor: str, **options: Any) -> RollResult:
        if step is self.refuse:
            raise CaRollStepError(step, RollState.IDLE)
        self.calls.append((step, actor, options))
        return RollResult(step, True, CaRollRecord(state=RollState.PREPARED), {"ok": 1})


@pytest.fixture
def queue() -> MemoryWorkQueue:
    return MemoryWorkQueue()


@pytest.fixture
def roll(audit: MemoryAuditLog, queue: MemoryWorkQueue) -> Iterator[FakeRoll]:
    fake = FakeRoll()
    settings = Settings.from_env({"CERTROLL_STORAGE": "memory", **auth_settings()})
    with override_services(Services(settings, ca_roll=fake, audit=audit, queue=queue)):
        yield fake


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


def request(
    method: str,
    step: str | None,
    body: dict[str, Any] | None = None,
    bearer: str | None = None,
    prefer: str | None = None,
) -> func.HttpRequest:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    if prefer:
        headers["Prefer"] = prefer
    raw = json.dumps(body).encode() if body is not None else b""
    return func.HttpRequest(
        method=method,
        url="http://localhost:7071/api/ca/roll" + (f"/{step}" if step else ""),
        headers=headers,
        params={},
        route_params={"step": step} if step else {},
        body=raw,
    )


def test_a_step_runs_with_its_options_for_the_caller(roll: FakeRoll) -> None:
    resp = api(request("POST", "prepare", {"mode": "compromise"}, token()))
    assert resp.status_code == 200
    doc = json.loads(resp.get_body())
    assert doc["step"] == "prepare"
    assert doc["roll"]["state"] == "prepared"
    assert doc["roll"]["next_step"] == "install"
    step, actor, options = roll.calls[0]
    assert step is RollStep.PREPARE
    assert actor == ALICE
    assert options["mode"].value == "compromise"


def test_retire_takes_a_root_crl_and_force(roll: FakeRoll) -> None:
    crl = base64.b64encode(b"\x30\x00").decode()
    resp = api(request("POST", "retire", {"force": True, "rootCrl": crl}, token()))
    assert resp.status_code == 200
    assert roll.calls[0][2] == {"force": True, "root_crl_der": b"\x30\x00"}


def test_status_is_a_get(roll: FakeRoll) -> None:
    resp = api(request("GET", None, bearer=token()))
    assert resp.status_code == 200
    assert json.loads(resp.get_body())["roll"]["state"] == "idle"


def test_out_of_order_answers_409_with_its_code(roll: FakeRoll) -> None:
    roll.refuse = RollStep.TRUST
    resp = api(request("POST", "trust", {}, token()))
    assert resp.status_code == 409
    assert json.loads(resp.get_body())["error"]["code"] == "ca_roll_out_of_order"


@pytest.mark.parametrize(
    ("step", "body", "code"),
    [
        ("rotate", {}, "ca_roll_step_invalid"),
        ("prepare", {"mode": "panic"}, "ca_roll_mode_invalid"),
        ("trust", {"force": True}, "unknown_field"),
        ("retire", {"rootCrl": "not base64!"}, "rootCrl_invalid"),
    ],
)
def test_bad_requests_are_refused_and_audited(
    roll: FakeRoll, audit: MemoryAuditLog, step: str, body: dict[str, Any], code: str
) -> None:
    resp = api(request("POST", step, body, token()))
    assert resp.status_code == 400
    assert json.loads(resp.get_body())["error"]["code"] == code
    assert not roll.calls
    entry = audit.list()[0]
    assert entry.outcome == "rejected"
    assert entry.detail["code"] == code


def test_without_a_token_or_the_role_nothing_runs(roll: FakeRoll) -> None:
    assert api(request("POST", "prepare", {})).status_code == 401
    assert api(request("POST", "prepare", {}, token(roles=()))).status_code == 403
    assert api(request("GET", "prepare", None, token())).status_code == 405
    assert not roll.calls


# --------------------------------------------------------------------------- through the queue


class QueueMessage(func.QueueMessage):
    def __init__(self, body: dict[str, Any], dequeue_count: int = 1) -> None:
        super().__init__(id="m-1", body=json.dumps(body).encode())
        self._count = dequeue_count

    @property
    def dequeue_count(self) -> int:
        return self._count


def test_respond_async_queues_the_step_and_the_worker_runs_it(
    roll: FakeRoll, queue: MemoryWorkQueue
) -> None:
    resp = api(request("POST", "retire", {"force": True}, token(), prefer="respond-async"))
    assert resp.status_code == 202
    assert resp.headers["Location"] == "ca/roll"
    assert resp.headers["Preference-Applied"] == "respond-async"
    assert not roll.calls  # nothing ran in the request
    (message,) = queue.receive(32)
    assert message == {"kind": "ca-roll", "step": "retire", "actor": ALICE, "body": {"force": True}}
    handle_work_message(QueueMessage(message), service=None)  # type: ignore[arg-type]
    assert roll.calls == [(RollStep.RETIRE, ALICE, {"force": True, "root_crl_der": None})]


def test_a_bad_step_is_refused_before_it_is_queued(
    roll: FakeRoll, queue: MemoryWorkQueue, audit: MemoryAuditLog
) -> None:
    resp = api(request("POST", "prepare", {"mode": "panic"}, token(), prefer="respond-async"))
    assert resp.status_code == 400
    assert queue.receive(32) == []
    assert [e.outcome for e in audit.list()] == ["rejected"]


def test_a_queued_step_the_roll_refuses_is_audited_not_retried(
    roll: FakeRoll, audit: MemoryAuditLog
) -> None:
    roll.refuse = RollStep.TRUST
    work = CaRollWork(RollStep.TRUST, ALICE, {})
    assert run_ca_roll_step(work, roll, audit) is None
    (entry,) = audit.list()
    assert (entry.action, entry.outcome, entry.actor) == ("ca_roll_trust", "rejected", ALICE)
    assert entry.detail["code"] == "ca_roll_out_of_order"
    assert entry.detail["via"] == "work-queue"


def test_a_transient_failure_of_a_queued_step_is_raised_for_a_retry(
    audit: MemoryAuditLog,
) -> None:
    class Down(FakeRoll):
        def run(self, step: RollStep, actor: str, **options: Any) -> RollResult:
            raise ServiceError("DPS answered 503")

    with pytest.raises(ServiceError):
        run_ca_roll_step(CaRollWork(RollStep.VERIFY, ALICE, {}), Down(), audit)
    assert audit.list() == []


@pytest.mark.parametrize(
    "message",
    [
        {"kind": "ca-roll", "step": "explode", "actor": "a", "body": {}},
        {"kind": "ca-roll", "step": "trust", "actor": "", "body": {}},
        {"kind": "ca-roll", "step": "trust", "actor": "a", "body": []},
        {"kind": "ca-roll", "step": "trust", "actor": "a", "body": {"force": 1}},
        {"kind": "ca-roll", "step": "trust", "actor": "a", "body": {}, "extra": 1},
    ],
)
def test_a_malformed_queued_step_is_refused_with_a_reason(
    roll: FakeRoll, message: dict[str, Any]
) -> None:
    from functions.worker import MalformedWorkMessage

    with pytest.raises(MalformedWorkMessage, match="ca-roll message"):
        handle_work_message(QueueMessage(message), service=None)  # type: ignore[arg-type]
    assert not roll.calls
