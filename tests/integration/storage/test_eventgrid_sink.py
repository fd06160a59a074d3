"""EventGridSink against a loopback HTTP stand-in for an Event Grid custom topic."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest
from azure.core.credentials import AzureKeyCredential

from shared.adapters.eventgrid import EventGridSink, event_sink_from_settings
from shared.domain.errors import ServiceError, ThrottledError
from shared.domain.model import DomainEvent
from shared.settings import Settings

# The Event Grid event schema (learn.microsoft.com/azure/event-grid/event-schema).
EVENT_GRID_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["id", "subject", "data", "eventType", "eventTime", "dataVersion"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "subject": {"type": "string", "minLength": 1},
            "data": {"type": "object"},
            "eventType": {"type": "string", "pattern": "^Certroll\\.[A-Z][A-Za-z]+$"},
            "eventTime": {"type": "string", "pattern": "^\\d{4}-\\d\\d-\\d\\dT.*Z$"},
            "dataVersion": {"const": "1.0"},
            "metadataVersion": {"type": ["string", "null"]},
            "topic": {"type": ["string", "null"]},
        },
    },
}


@dataclass
class Topic:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def topic() -> Iterator[Topic]:
    state = Topic(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers.items()), "body": body}
            )
            status, headers = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api/events"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def event(kind: str = "CertificateIssued", device: str = "dev-1", **data: Any) -> DomainEvent:
    return DomainEvent(
        event_type=kind,
        subject=f"devices/{device}",
        data={"deviceId": device, **data},
        event_id=f"{kind}-{device}",
        at=datetime(2026, 6, 1, 8, 30, tzinfo=UTC),
    )


def test_publish_sends_event_grid_schema(topic: Topic) -> None:
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=0)
    sink.publish(
        [
            event(serialNumber="0a1b", notAfter="2026-07-01T08:30:00Z"),
            event("RotationFailed", "dev-2", reason="csr_timeout"),
        ]
    )
    (request,) = topic.requests
    assert request["path"].startswith("/api/events?api-version=2018-01-01")
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["aeg-sas-key"] == "test"
    assert headers["content-type"].startswith("application/json")
    body = request["body"]
    jsonschema.validate(body, EVENT_GRID_SCHEMA)
    first, second = body
    assert first["eventType"] == "Certroll.CertificateIssued"
    assert first["subject"] == "devices/dev-1"
    assert first["id"] == "CertificateIssued-dev-1"
    assert first["data"] == {
        "deviceId": "dev-1",
        "serialNumber": "0a1b",
        "notAfter": "2026-07-01T08:30:00Z",
    }
    assert first["eventTime"].startswith("2026-06-01T08:30:00")
    assert second["eventType"] == "Certroll.RotationFailed"
    assert second["data"]["reason"] == "csr_timeout"


def test_publish_fills_id_and_time_and_batches(topic: Topic) -> None:
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=0)
    events = [
        DomainEvent("DeviceDisallowed", f"devices/d{i}", {"deviceId": f"d{i}"}) for i in range(150)
    ]
    sink.publish(events)
    assert [len(r["body"]) for r in topic.requests] == [100, 50]
    sent = [e for r in topic.requests for e in r["body"]]
    jsonschema.validate(sent, EVENT_GRID_SCHEMA)
    assert len({e["id"] for e in sent}) == 150
    assert [e["subject"] for e in sent] == [f"devices/d{i}" for i in range(150)]


def test_throttling_maps_to_throttled_error(topic: Topic) -> None:
    topic.answers.append((429, {"Retry-After": "9"}))
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=0)
    with pytest.raises(ThrottledError) as info:
        sink.publish([event()])
    assert info.value.retry_after == 9.0


def test_sdk_retry_honours_retry_after_then_succeeds(topic: Topic) -> None:
    topic.answers.append((503, {"Retry-After": "0"}))
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=2)
    sink.publish([event()])
    assert len(topic.requests) == 2
    assert topic.requests[0]["body"] == topic.requests[1]["body"]


@pytest.mark.parametrize("status", [401, 403, 400, 500])
def test_other_failures_map_to_service_error(topic: Topic, status: int) -> None:
    topic.answers.append((status, {}))
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=0)
    with pytest.raises(ServiceError) as info:
        sink.publish([event()])
    assert info.value.status == status


def test_unreachable_topic_is_a_service_error() -> None:
    sink = EventGridSink("http://127.0.0.1:9/api/events", AzureKeyCredential("test"), retry_total=0)
    with pytest.raises(ServiceError, match="unreachable"):
        sink.publish([event()])


def test_bad_events_are_rejected_before_sending(topic: Topic) -> None:
    sink = EventGridSink(topic.url, AzureKeyCredential("test"), retry_total=0)
    with pytest.raises(ValueError, match="subject"):
        sink.publish([event(), DomainEvent("CertificateIssued", "", {})])
    with pytest.raises(ValueError, match="timezone-aware"):
        sink.publish([DomainEvent("X", "devices/a", {}, at=datetime(2026, 1, 1))])
    assert topic.requests == []


def test_event_sink_from_settings() -> None:
    assert event_sink_from_settings(Settings.from_env({})) is None
    sink = event_sink_from_settings(
        Settings.from_env({"CERTROLL_EVENTGRID_TOPIC_ENDPOINT": "https://t.example/api/events"})
    )
    assert isinstance(sink, EventGridSink)
    assert sink.endpoint == "https://t.example/api/events"
