"""The local dev host invokes functions the way the Functions host does."""

from __future__ import annotations

import base64
import json
import uuid

import azure.functions as func
import pytest
from werkzeug.test import Client

from local.devhost import MAX_DEQUEUE_COUNT, DevHost


def _toy_app(calls: list[tuple[str, object]]) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="things/{id}", methods=["POST"])
    def things(req: func.HttpRequest) -> func.HttpResponse:
        calls.append(("http", (req.route_params["id"], req.get_json())))
        return func.HttpResponse(json.dumps({"ok": req.route_params["id"]}), status_code=201,
                                 mimetype="application/json")

    @app.route(route="items/{id}/{action?}", methods=["GET", "POST"])
    def items(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")

    @app.route(route="open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def open_route(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("open")

    @app.event_hub_message_trigger(arg_name="events", event_hub_name="%HUB%", connection="EH",
                                   cardinality="many")
    def hub(events: list[func.EventHubEvent]) -> None:
        for e in events:
            calls.append(("eh", (e.get_body(), dict(e.iothub_metadata or {}))))

    @app.event_grid_trigger(arg_name="event")
    def grid(event: func.EventGridEvent) -> None:
        calls.append(("eg", (event.event_type, event.subject, event.get_json())))

    @app.timer_trigger(schedule="%SCHEDULE%", arg_name="timer")
    def tick(timer: func.TimerRequest) -> None:
        calls.append(("timer", timer.past_due))

    @app.queue_trigger(arg_name="msg", queue_name="%QUEUE%", connection="ST")
    def work(msg: func.QueueMessage) -> None:
        payload = msg.get_json()
        calls.append(("queue", (payload, msg.dequeue_count)))
        if payload.get("fail"):
            raise ValueError("payload asked to fail")

    return app


@pytest.fixture
def host() -> tuple[DevHost, list[tuple[str, object]]]:
    calls: list[tuple[str, object]] = []
    settings = {"HUB": "twins", "SCHEDULE": "0 0 3 * * *", "QUEUE": f"q{uuid.uuid4().hex[:10]}"}
    return DevHost(_toy_app(calls), settings, function_key="k3y"), calls


def test_http_route_requires_function_key(host: tuple[DevHost, list]) -> None:
    dev, calls = host
    client = Client(dev.wsgi)
    assert client.post("/api/things/a1", json={"x": 1}).status_code == 401
    assert client.post("/api/things/a1?code=wrong", json={"x": 1}).status_code == 401
    assert calls == []
    ok = client.post("/api/things/a1", json={"x": 1}, headers={"x-functions-key": "k3y"})
    assert ok.status_code == 201
    assert ok.get_json() == {"ok": "a1"}
    assert calls == [("http", ("a1", {"x": 1}))]
    assert client.get("/api/things/a1?code=k3y").status_code == 405
    assert client.get("/api/open").status_code == 200


def test_eventgrid_webhook_handshake_and_delivery(host: tuple[DevHost, list]) -> None:
    dev, calls = host
    client = Client(dev.wsgi)
    validation = [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "subject": "", "data": {"validationCode": "abc"}, "eventTime":
                   "2026-01-01T00:00:00+00:00", "dataVersion": "1"}]
    url = "/runtime/webhooks/eventgrid?functionName=grid&code=k3y"
    r = client.post(url, json=validation, headers={"aeg-event-type": "SubscriptionValidation"})
    assert r.get_json() == {"validationResponse": "abc"}
    event = {"id": "2", "eventType": "Microsoft.Devices.DeviceConnected", "subject": "devices/d1",
             "data": {"deviceId": "d1"}, "eventTime": "2026-01-01T00:00:00+00:00",
             "dataVersion": "1", "topic": "/hub"}
    notification = {"aeg-event-type": "Notification"}
    assert client.post(url, json=[event], headers=notification).status_code == 200
    connected = ("Microsoft.Devices.DeviceConnected", "devices/d1", {"deviceId": "d1"})
    assert calls == [("eg", connected)]
    assert client.post(url.replace("k3y", "no"), json=[event]).status_code == 401


def test_event_hub_batch_resolves_binding_expression(host: tuple[DevHost, list]) -> None:
    dev, calls = host
    msg = {"body": {"version": 3}, "properties": {"deviceId": "d1"},
           "systemProperties": {"iothub-connection-device-id": "d1"}}
    assert dev.feed_event_hub("other", [msg]) == 0
    assert dev.feed_event_hub("twins", [msg, msg]) == 1
    assert calls == [("eh", (b'{"version": 3}', {"connection-device-id": "d1"}))] * 2


def test_timer_fires(host: tuple[DevHost, list]) -> None:
    dev, calls = host
    assert dev.fire_timer() == 1
    assert calls == [("timer", False)]


@pytest.mark.azurite
def test_queue_trigger_poisons_after_max_dequeue(host: tuple[DevHost, list]) -> None:
    from azure.storage.queue import QueueServiceClient

    from shared.settings import AZURITE_CONNECTION_STRING

    dev, calls = host
    service = QueueServiceClient.from_connection_string(AZURITE_CONNECTION_STRING)
    dev.queue_service = service
    name = dev.settings["QUEUE"]
    queue = service.get_queue_client(name)
    queue.create_queue()
    try:
        for payload in ({"n": 1}, {"fail": True}):
            queue.send_message(base64.b64encode(json.dumps(payload).encode()).decode())
        for _ in range(MAX_DEQUEUE_COUNT + 1):
            dev.pump_queue()
        good = [c for c in calls if c[1][0] == {"n": 1}]
        bad = [c for c in calls if c[1][0] == {"fail": True}]
        assert len(good) == 1
        assert [c[1][1] for c in bad] == list(range(1, MAX_DEQUEUE_COUNT + 1))
        poison = service.get_queue_client(f"{name}-poison")
        moved = list(poison.receive_messages())
        assert len(moved) == 1
        assert json.loads(base64.b64decode(moved[0].content)) == {"fail": True}
        assert list(queue.receive_messages()) == []
    finally:
        queue.delete_queue()
        service.get_queue_client(f"{name}-poison").delete_queue()


def test_optional_route_segment_matches_with_and_without(host: tuple[DevHost, list]) -> None:
    dev, _ = host
    client = Client(dev.wsgi)
    key = {"x-functions-key": "k3y"}
    assert client.get("/api/items/d1", headers=key).get_json() == {"id": "d1"}
    with_action = client.post("/api/items/d1/go", headers=key).get_json()
    assert with_action == {"id": "d1", "action": "go"}
    assert client.get("/api/items/d1/go/more", headers=key).status_code == 404


def test_function_key_is_compared_in_constant_time(
    host: tuple[DevHost, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    import local.devhost as devhost

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(devhost.hmac, "compare_digest", spy)
    dev, _calls = host
    client = Client(dev.wsgi)
    assert client.post("/api/things/a1?code=k3x", json={}).status_code == 401
    assert client.post("/api/things/a1?code=k3y", json={}).status_code == 201
    assert compared == [(b"k3x", b"k3y"), (b"k3y", b"k3y")]
    # a key that is not ASCII is refused like any other wrong key
    assert (
        client.post("/api/things/a1", json={}, headers={"x-functions-key": "k\u00e9y"}).status_code
        == 401
    )
