"""A small local host for ``function_app.app``: runs the very same functions without Core Tools.

It indexes ``app.get_functions()`` and invokes each function's user code with the
``azure.functions`` objects the Python worker would build:

- HTTP triggers under ``/api/<route>`` with the host's function-key check
  (``x-functions-key`` header or ``code=`` query parameter) for ``authLevel=function``;
- the Event Grid webhook ``/runtime/webhooks/eventgrid?functionName=NAME`` (subscription
  validation handshake, Event Grid schema and CloudEvents, as azure-eventgrid sends them);
- Event Hub triggers fed from a local in-memory queue (:meth:`DevHost.feed_event_hub`);
- the timer (:meth:`DevHost.fire_timer`);
- storage-queue triggers polled from Azurite with the host's dequeue-count and poison
  queue rules (:meth:`DevHost.pump_queue`).

Easy Auth is not emulated: the ``X-MS-CLIENT-PRINCIPAL`` header a caller sends reaches the
function unchanged, as on a plan without it; the function validates the bearer token itself
(locally against the stack's loopback token issuer, ``local/token_issuer.py``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.core.exceptions import HttpResponseError
from azure.functions.meta import Datum
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

logger = logging.getLogger(__name__)

MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount
# The host keeps a message invisible while its function runs (it renews the lease); a
# lease as long as host.json's functionTimeout stands in for that renewal here.
FUNCTION_TIMEOUT_SECONDS = 600


class _Timer(func.TimerRequest):
    def __init__(self, past_due: bool = False) -> None:
        self._past_due = past_due

    @property
    def past_due(self) -> bool:
        return self._past_due


class _QueueMessage(func.QueueMessage):
    def __init__(self, *, id: str, body: bytes, dequeue_count: int, pop_receipt: str) -> None:
        super().__init__(id=id, body=body, pop_receipt=pop_receipt)
        self._dequeue_count = dequeue_count

    @property
    def dequeue_count(self) -> int:
        return self._dequeue_count


@dataclass(frozen=True)
class IndexedFunction:
    name: str
    trigger_type: str
    binding: dict[str, Any]
    call: Callable[..., Any]


def _resolve(value: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` binding expressions with app settings, as the host does."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise KeyError(f"binding expression %{name}% has no app setting")
        return settings[name]

    return re.sub(r"%([^%]+)%", sub, value)


class DevHost:
    def __init__(
        self,
        app: func.FunctionApp,
        settings: Mapping[str, str],
        function_key: str,
        *,
        queue_service: Any | None = None,
    ) -> None:
        self.settings = settings
        self.function_key = function_key
        self.queue_service = queue_service
        self.functions: dict[str, IndexedFunction] = {}
        rules = []
        # azure-functions refuses to index an app twice in one process unless this is reset
        if hasattr(app, "functions_bindings"):
            app.functions_bindings = None
        for fn in app.get_functions():
            trigger = fn.get_trigger().get_dict_repr()
            indexed = IndexedFunction(
                name=fn.get_function_name(),
                trigger_type=str(trigger["type"]),
                binding={k: (v.value if hasattr(v, "value") else v) for k, v in trigger.items()},
                call=fn.get_user_function(),
            )
            self.functions[indexed.name] = indexed
            if indexed.trigger_type == "httpTrigger":
                route = str(indexed.binding.get("route") or indexed.name)
                methods = [str(getattr(m, "value", m)) for m in trigger.get("methods") or []]
                for path in _route_paths(route):
                    rules.append(Rule(path, endpoint=indexed.name, methods=methods or None))
        self._routes = Map(rules, strict_slashes=False)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.invocations: dict[str, int] = dict.fromkeys(self.functions, 0)

    # ----------------------------------------------------------------- helpers
    def _of_type(self, trigger_type: str) -> list[IndexedFunction]:
        return [f for f in self.functions.values() if f.trigger_type == trigger_type]

    def _invoke(self, fn: IndexedFunction, **kwargs: Any) -> Any:
        self.invocations[fn.name] += 1
        return fn.call(**kwargs)

    def _key_ok(self, request: Request) -> bool:
        given = request.headers.get("x-functions-key") or request.args.get("code")
        if not given or not self.function_key:
            return False
        # constant time: the comparison's duration says nothing about the key
        return hmac.compare_digest(given.encode("utf-8"), self.function_key.encode("utf-8"))

    # ----------------------------------------------------------------- HTTP
    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        if request.path.rstrip("/") == "/runtime/webhooks/eventgrid":
            return self._eventgrid(request)
        adapter = self._routes.bind_to_environ(request.environ)
        try:
            name, params = adapter.match()
        except Exception as exc:  # werkzeug raises HTTPException subclasses (404/405)
            code = getattr(exc, "code", 404)
            return Response(
                json.dumps({"error": {"code": "not_found", "message": str(exc)}}),
                status=code,
                content_type="application/json",
            )
        fn = self.functions[name]
        if fn.binding.get("authLevel", "function") != "anonymous" and not self._key_ok(request):
            return Response("", status=401)
        req = func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=dict(request.headers),
            params=dict(request.args),
            route_params={k: str(v) for k, v in params.items()},
            body=request.get_data(),
        )
        try:
            result: func.HttpResponse = self._invoke(fn, **{fn.binding["name"]: req})
        except Exception:
            logger.exception("function %s failed", fn.name)
            return Response("", status=500)
        return Response(
            result.get_body(),
            status=result.status_code,
            headers=dict(result.headers),
            mimetype=result.mimetype,
        )

    def _eventgrid(self, request: Request) -> Response:
        if not self._key_ok(request):
            return Response("", status=401)
        name = request.args.get("functionName", "")
        fn = self.functions.get(name)
        if fn is None or fn.trigger_type != "eventGridTrigger":
            return Response(f"no Event Grid function {name!r}", status=404)
        try:
            payload = json.loads(request.get_data() or b"null")
        except ValueError:
            return Response("body is not JSON", status=400)
        events = payload if isinstance(payload, list) else [payload]
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            code = events[0]["data"]["validationCode"]
            return Response(
                json.dumps({"validationResponse": code}),
                status=200,
                content_type="application/json",
            )
        failed = 0
        for event in events:
            try:
                self._invoke(fn, **{fn.binding["name"]: to_eventgrid_event(event)})
            except Exception:
                logger.exception("function %s failed on event %s", fn.name, event.get("id"))
                failed += 1
        return Response("", status=500 if failed else 200)

    def serve(self, host: str = "127.0.0.1", port: int = 7071) -> str:
        """Serve HTTP in a background thread; returns the base URL."""
        self._server = make_server(host, port, self.wsgi, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://{host}:{self._server.server_port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ----------------------------------------------------------------- Event Hubs
    def feed_event_hub(self, event_hub_name: str, messages: Iterable[dict[str, Any]]) -> int:
        """Deliver routed messages (``{"body", "properties", "systemProperties"}``) to every
        Event Hub trigger bound to ``event_hub_name`` as one batch. Returns functions called."""
        batch = [to_eventhub_event(m, seq) for seq, m in enumerate(messages)]
        if not batch:
            return 0
        called = 0
        for fn in self._of_type("eventHubTrigger"):
            if _resolve(str(fn.binding["eventHubName"]), self.settings) != event_hub_name:
                continue
            many = fn.binding.get("cardinality", "many") == "many"
            if many:
                self._invoke(fn, **{fn.binding["name"]: batch})
            else:
                for event in batch:
                    self._invoke(fn, **{fn.binding["name"]: event})
            called += 1
        return called

    # ----------------------------------------------------------------- timer
    def fire_timer(self, name: str | None = None, past_due: bool = False) -> int:
        called = 0
        for fn in self._of_type("timerTrigger"):
            if name is None or fn.name == name:
                self._invoke(fn, **{fn.binding["name"]: _Timer(past_due)})
                called += 1
        return called

    # ----------------------------------------------------------------- queues
    def pump_queue(
        self, max_messages: int = 32, visibility_timeout: int = FUNCTION_TIMEOUT_SECONDS
    ) -> int:
        """Receive messages for every queue trigger once; returns messages handled.

        A message whose function raises stays on the queue (visible again after the
        timeout); at ``MAX_DEQUEUE_COUNT`` it moves to ``<queue>-poison`` with the reason.
        """
        if self.queue_service is None:
            raise RuntimeError("no queue service configured")
        handled = 0
        for fn in self._of_type("queueTrigger"):
            queue_name = _resolve(str(fn.binding["queueName"]), self.settings)
            client = self.queue_service.get_queue_client(queue_name)
            for message in client.receive_messages(
                messages_per_page=max_messages,
                visibility_timeout=visibility_timeout,
                max_messages=max_messages,
            ):
                body = _decode_queue_body(message.content)
                msg = _QueueMessage(
                    id=message.id,
                    body=body,
                    pop_receipt=message.pop_receipt,
                    dequeue_count=message.dequeue_count or 1,
                )
                handled += 1
                try:
                    self._invoke(fn, **{fn.binding["name"]: msg})
                except Exception as exc:
                    logger.warning(
                        "queue function %s failed (dequeue %s): %s",
                        fn.name,
                        message.dequeue_count,
                        exc,
                    )
                    if (message.dequeue_count or 1) >= MAX_DEQUEUE_COUNT:
                        self._poison(queue_name, message, exc)
                    else:
                        client.update_message(message, visibility_timeout=0)
                    continue
                try:
                    client.delete_message(message)
                except HttpResponseError as exc:  # lease lost: another receiver has it now
                    if exc.error_code not in ("PopReceiptMismatch", "MessageNotFound"):
                        raise
                    logger.warning(
                        "queue message %s was handed out again before it was "
                        "deleted; the function is idempotent",
                        message.id,
                    )
        return handled

    def _poison(self, queue_name: str, message: Any, exc: Exception) -> None:
        poison = self.queue_service.get_queue_client(f"{queue_name}-poison")
        try:
            poison.create_queue()
        except Exception:  # already exists
            logger.debug("poison queue %s exists", queue_name)
        poison.send_message(message.content)
        self.queue_service.get_queue_client(queue_name).delete_message(message)
        logger.error("message %s moved to %s-poison: %s", message.id, queue_name, exc)


def _route_paths(route: str) -> list[str]:
    """Werkzeug paths for a Functions route template; ``{name?}`` makes two rules."""
    parts = route.strip("/").split("/")
    optional = [i for i, p in enumerate(parts) if re.fullmatch(r"\{\w+(:\w+)?\?\}", p)]
    variants = [parts]
    if optional:  # the host allows optional parameters only at the end of the template
        variants.append(parts[: optional[0]])
    return [
        "/api/" + "/".join(re.sub(r"^\{(\w+)(:\w+)?\??\}$", r"<\1>", p) for p in v)
        for v in variants
    ]


def _decode_queue_body(content: Any) -> bytes:
    raw = content.encode() if isinstance(content, str) else bytes(content)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw


def to_eventhub_event(message: dict[str, Any], sequence_number: int = 0) -> func.EventHubEvent:
    """Build the EventHubEvent the Python worker gives for a routed IoT Hub message."""
    body = message.get("body")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    system = dict(message.get("systemProperties") or {})
    properties = dict(message.get("properties") or {})
    enqueued = system.get("iothub-enqueuedtime")
    return func.EventHubEvent(
        body=raw,
        trigger_metadata={
            "Properties": Datum(json.dumps(properties), "json"),
            "SystemProperties": Datum(json.dumps(system), "json"),
        },
        enqueued_time=datetime.fromisoformat(enqueued) if enqueued else datetime.now(UTC),
        sequence_number=sequence_number,
        iothub_metadata={k.removeprefix("iothub-"): str(v) for k, v in system.items()},
    )


def to_eventgrid_event(event: dict[str, Any]) -> func.EventGridEvent:
    """Accept the Event Grid schema and CloudEvents 1.0 (what azure-eventgrid sends)."""
    if "specversion" in event:  # CloudEvent
        return func.EventGridEvent(
            id=event["id"],
            data=event.get("data") or {},
            topic=event.get("source", ""),
            subject=event.get("subject", ""),
            event_type=event["type"],
            event_time=datetime.fromisoformat(event["time"]) if event.get("time") else None,
            data_version=event.get("dataschema", ""),
        )
    return func.EventGridEvent(
        id=event["id"],
        data=event.get("data") or {},
        topic=event.get("topic", ""),
        subject=event.get("subject", ""),
        event_type=event["eventType"],
        event_time=datetime.fromisoformat(event["eventTime"]) if event.get("eventTime") else None,
        data_version=event.get("dataVersion", ""),
    )
