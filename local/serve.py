"""``certroll serve``: the local stack, its pumps and (optionally) a simulated fleet,
until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from shared.settings import Settings


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 7071
    transport: str = "inproc"
    key_backend: str | None = None
    devices: int = 0
    speed: float = 1.0
    sweep_every: float = 0.0  # seconds of real time between timer firings; 0: never
    poll_seconds: float = 0.2
    run_id: str | None = None


def run_serve(
    settings: Settings,
    options: ServeOptions,
    *,
    stop: threading.Event | None = None,
    out: Any = None,
) -> None:
    """Run the local stack on ``options.host:options.port`` (0: any free port) and its
    pumps until ``stop`` is set or Ctrl-C."""
    from local.stack import LocalStack
    from shared.clock import ScaledClock

    out = out or sys.stdout
    stop = stop or threading.Event()
    stack = LocalStack(
        settings,
        clock=ScaledClock(options.speed),
        transport=options.transport,
        key_backend=options.key_backend,
        run_id=options.run_id,
    )
    restore = _stop_on_signals(stop, out)
    try:
        try:
            # start on the asked port before anything else: entering ``with stack``
            # first would start the stack on its default port (0: any free port)
            stack.start(host=options.host, port=options.port)
            sim = _serve_fleet(stack, options.devices) if options.devices else None
            print(_serve_banner(stack, sim), file=out, flush=True)
            try:
                _serve_loop(stack, sim, options, stop)
            except KeyboardInterrupt:
                print("stopping", file=out, flush=True)
        finally:
            stack.close()
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        print("stopped", file=out, flush=True)
    finally:
        restore()


def _stop_on_signals(stop: threading.Event, out: Any) -> Any:
    """The first SIGINT or SIGTERM sets ``stop``, so the loop ends between two pumps
    rather than wherever the interrupt lands (a pump's worker threads, a storage call);
    a second one interrupts at once. Returns the function that puts the old handlers
    back. Outside the main thread (tests driving ``run_serve``) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping", file=out, flush=True)
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _serve_fleet(stack: Any, devices: int) -> Any:
    from local.device.simulator import FleetSimulator

    authority = stack.services.authority
    issuer = stack.services.issuer

    def issue_initial(device_id: str, csr_pem: str) -> str:
        chain: str = issuer.issue(
            device_id,
            csr_pem,
            request_id=f"serve-{device_id}",
            trigger="provision",
            actor="system:serve",
        ).chain_pem
        return chain

    sim = FleetSimulator(
        stack.emulator,
        issue_initial,
        devices,
        trust_anchor=authority.root or authority.chain[-1],
        id_prefix="dev-",
    )
    sim.start(wait=False)
    return sim


def _serve_banner(stack: Any, sim: Any) -> str:
    url = stack.url
    lines = [
        f"certroll dev host on {url}",
        f"  API:          {url}/api/devices/{{id}}  (headers x-functions-key, "
        "Authorization: Bearer $(certroll token))",
        f"  function key: {stack.function_key_path}",
        f"  token issuer: {stack.token_issuer.url} (loopback Entra ID stand-in)",
        f"  Event Grid:   {url}/runtime/webhooks/eventgrid?functionName=device_lifecycle",
        f"  key backend:  {stack.backend} ({stack.backend_note})",
        f"  run id:       {stack.run_id}",
        f"  storage:      Azurite, tables {stack.settings.get('CERTROLL_TABLE_PREFIX')}*, "
        f"queue {stack.settings.get('CERTROLL_WORK_QUEUE')}",
    ]
    if stack.fleet_server is not None:
        lines.append(f"  DPS/hub REST: {stack.fleet_server.url}")
        if stack.fleet_ca_file is not None:
            lines.append(f"  REST CA file: {stack.fleet_ca_file} (azure-core connection_verify)")
    if sim is not None:
        lines.append(f"  devices:      {len(sim.device_ids)} simulated ({sim.device_ids[0]} ...)")
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


def _serve_loop(stack: Any, sim: Any, options: ServeOptions, stop: threading.Event) -> None:
    every = options.sweep_every
    next_sweep = time.monotonic() + every if every else None
    while not stop.is_set():
        stack.pump()
        if sim is not None:
            sim.step_all()
        if next_sweep is not None and time.monotonic() >= next_sweep:
            stack.fire_timer()
            next_sweep = time.monotonic() + every
        stop.wait(options.poll_seconds)
