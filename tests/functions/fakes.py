"""A stand-in rotation service that records every call, and request builders."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import azure.functions as func

import function_app
from shared.domain.commands import (
    Allow,
    ConnectionFailure,
    DeviceConnected,
    DeviceCreated,
    Disallow,
    RotateBatch,
    StartRenewal,
    Status,
    Sweep,
    TwinReported,
)
from shared.domain.model import RotationRecord, RotationState

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class FakeRotation:
    """Records ``(method, args)`` for each call; ``fail[method]`` raises instead."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    fail: dict[str, BaseException | Callable[..., BaseException | None]] = field(
        default_factory=dict
    )
    known: set[str] | None = None  # when set, other device ids raise NotFoundError

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        failure = self.fail.get(method)
        if callable(failure) and not isinstance(failure, BaseException):
            failure = failure(*args)
        if failure is not None:
            raise failure
        if self.known is not None and args and isinstance(args[0], str):
            if args[0] not in self.known:
                from shared.domain.errors import NotFoundError

                raise NotFoundError(f"no device {args[0]}")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def in_enrollment_batch(self, items: Sequence[T], handle: Callable[[T], R]) -> list[R]:
        """Each item handled once (a fake service stages no enrollment write)."""
        return [handle(item) for item in items]

    def on_twin_reported(self, event: TwinReported) -> RotationRecord:
        """Recorded as ``(device_id, parsed report, twin_version)``."""
        self._record("on_twin_reported", event.device_id, event.report, event.twin_version)
        return RotationRecord(device_id=event.device_id)

    def on_connection_failure(
        self, failure: ConnectionFailure, unknown: Any = None
    ) -> dict[str, str]:
        self._record("on_connection_failure", failure)
        return {"outcome": "noop"}

    def on_unknown_devices(self, unknown: Any) -> None:
        self._record("on_unknown_devices", unknown)

    def on_device_connected(self, event: DeviceConnected) -> RotationRecord:
        self._record("on_device_connected", event.device_id, event.at)
        return RotationRecord(device_id=event.device_id)

    def on_device_created(self, event: DeviceCreated) -> None:
        self._record("on_device_created", event.device_id)

    def start_renewal(self, command: StartRenewal) -> RotationRecord:
        self._record("start_renewal", command.device_id, command.reason, command.actor)
        return RotationRecord(
            device_id=command.device_id,
            state=RotationState.CSR_REQUESTED,
            request_id="req-1",
            reason=str(command.reason),
            updated_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            etag="W/secret-etag",
        )

    def sweep(self, command: Sweep | None = None) -> dict[str, Any]:
        command = command or Sweep()
        self._record("sweep", command.dry_run, command.batch_size)
        return {"counts": {"expiring": 2}, "dryRun": command.dry_run}

    def process_batch(self, batch: RotateBatch) -> dict[str, int]:
        self._record("process_batch", batch)
        return {"processed": len(batch.device_ids)}

    def disallow(self, command: Disallow) -> dict[str, Any]:
        self._record("disallow", command.device_id, command.reason, command.actor)
        return {"deviceId": command.device_id, "revokedSerials": ["1f"], "noop": False}

    def allow(self, command: Allow) -> RotationRecord:
        """Recorded as ``(device_id, actor)``, with the CSR's PEM appended when one is given."""
        csr = () if command.csr is None else (command.csr.pem,)
        self._record("allow", command.device_id, command.actor, *csr)
        return RotationRecord(device_id=command.device_id, state=RotationState.CSR_REQUESTED)

    def status(self, query: Status) -> dict[str, Any]:
        self._record("status", query.device_id)
        return {
            "deviceId": query.device_id,
            "state": "idle",
            "updatedAt": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        }


def indexed_functions() -> list[func.decorators.function_app.Function]:
    """``app.get_functions()``, callable more than once per process.

    azure-functions remembers the names it indexed and reports every name as a duplicate
    on a second ``get_functions()``; the worker indexes once, tests index many times.
    """
    function_app.app.functions_bindings = None
    return function_app.app.get_functions()


def user_function(name: str) -> Callable[..., Any]:
    for fn in indexed_functions():
        if fn.get_function_name() == name:
            return fn.get_user_function()
    raise LookupError(f"function_app has no function {name}")


def http_request(
    method: str,
    device_id: str | None,
    action: str | None = None,
    *,
    body: bytes | dict[str, Any] | None = None,
    token: str | None = None,
    principal: str | None = None,
    principal_name: str | None = None,
    authorization: str | None = None,
) -> func.HttpRequest:
    """A request to ``devices/{device_id}/{action}``; ``token`` goes in
    ``Authorization: Bearer``, ``authorization`` replaces that header as given."""
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    if principal is not None:
        headers["X-MS-CLIENT-PRINCIPAL"] = principal
    if principal_name is not None:
        headers["X-MS-CLIENT-PRINCIPAL-NAME"] = principal_name
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    if raw:
        headers["Content-Type"] = "application/json"
    route = {"id": device_id} if device_id is not None else {}
    if action:
        route["action"] = action
    path = f"devices/{device_id}" + (f"/{action}" if action else "")
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{path}",
        headers=headers,
        params={},
        route_params=route,
        body=raw,
    )
