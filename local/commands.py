"""``certroll serve``, ``certroll demo`` and ``certroll report``: the local stack's commands.

Registered with :func:`shared.cli.register_command` when ``shared.cli`` imports this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.cli import EXIT_FAILED, EXIT_OK, register_command
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.settings import Settings

logger = logging.getLogger(__name__)

DEMO_DIR = "demo"  # the demo keeps its own PKI and run records under $CERTROLL_HOME/demo
LAST_RUN_FILE = "last-run"


def demo_home(settings: Settings) -> Path:
    return settings.home.resolve() / DEMO_DIR


def _settings_with_home(settings: Settings, home: Path) -> Settings:
    values = dict(settings.values)
    values["CERTROLL_HOME"] = str(home)
    return Settings(values)


# --------------------------------------------------------------------------- serve


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
) -> int:
    """Run the local stack and its pumps until ``stop`` is set or Ctrl-C."""
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
    try:
        with stack:
            stack.start(host=options.host, port=options.port)
            sim = _serve_fleet(stack, options.devices) if options.devices else None
            print(_serve_banner(stack, sim), file=out, flush=True)
            try:
                _serve_loop(stack, sim, options, stop)
            except KeyboardInterrupt:
                print("stopping", file=out, flush=True)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        print("stopped", file=out, flush=True)
    return EXIT_OK


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
        f"  API:          {url}/api/devices/{{id}}  (header x-functions-key)",
        f"  function key: {stack.function_key_path}",
        f"  Event Grid:   {url}/runtime/webhooks/eventgrid?functionName=device_lifecycle",
        f"  key backend:  {stack.backend} ({stack.backend_note})",
        f"  run id:       {stack.run_id}",
        f"  storage:      Azurite, tables {stack.settings.get('CERTROLL_TABLE_PREFIX')}*, "
        f"queue {stack.settings.get('CERTROLL_WORK_QUEUE')}",
    ]
    if stack.fleet_server is not None:
        lines.append(f"  DPS/hub REST: {stack.fleet_server.url}")
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


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (loopback)")
    parser.add_argument("--port", type=int, default=7071, help="dev host port (0: any free)")
    parser.add_argument(
        "--transport",
        choices=("inproc", "http"),
        default="inproc",
        help="emulator in process, or production adapters over its REST API",
    )
    parser.add_argument(
        "--key-backend",
        choices=("pkcs11", "file"),
        default=None,
        help="issuing key backend for a new PKI (default: pkcs11 on SoftHSM2 "
        "when installed, else file)",
    )
    parser.add_argument("--devices", type=int, default=0, help="simulated devices to run")
    parser.add_argument("--speed", type=float, default=1.0, help="clock speed-up factor")
    parser.add_argument(
        "--sweep-every",
        type=float,
        default=0.0,
        help="fire the daily_sweep timer every SECONDS of real time (0: never)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="lower-case letters/digits naming this run's tables (default: random)",
    )


def _run_serve(args: argparse.Namespace) -> int:
    if args.devices < 0 or args.speed <= 0 or args.sweep_every < 0:
        raise InvalidRequestError(
            "argument_invalid", "--devices and --sweep-every must be >= 0, --speed > 0"
        )
    options = ServeOptions(
        host=args.host,
        port=args.port,
        transport=args.transport,
        key_backend=args.key_backend,
        devices=args.devices,
        speed=args.speed,
        sweep_every=args.sweep_every,
        run_id=args.run_id,
    )
    return run_serve(Settings.from_env(), options)


# --------------------------------------------------------------------------- demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--transport",
        choices=("inproc", "http"),
        default="inproc",
        help="emulator in process, or production adapters over its REST API",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the HTML expiry report (before/after) to FILE",
    )
    parser.add_argument(
        "--key-backend",
        choices=("pkcs11", "file"),
        default=None,
        help="issuing key backend for a new demo PKI (default: pkcs11 on "
        "SoftHSM2 when installed, else file)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="lower-case letters/digits naming this run's tables (default: random)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the fleet")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_demo(args: argparse.Namespace) -> int:
    from local.demo import DemoOptions, run_demo, write_report

    settings = Settings.from_env()
    home = demo_home(settings)
    options = DemoOptions(
        devices=args.devices,
        transport=args.transport,
        run_id=args.run_id,
        key_backend=args.key_backend,
        seed=args.seed,
        progress=not args.no_progress,
    )
    quiet = args.json

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    _drop_previous_run(settings, home)
    result = run_demo(_settings_with_home(settings, home), options, say=say)
    home.mkdir(parents=True, exist_ok=True)
    (home / LAST_RUN_FILE).write_text(result.run_id + "\n", encoding="utf-8")
    if args.report is not None:
        write_report(result, args.report)
    if args.json:
        print(json.dumps({**result.summary, "metrics": result.metrics}))
    else:
        width = max(len(k) for k in result.summary)
        print("\nsummary")
        for key, value in result.summary.items():
            print(f"  {key:<{width}}  {value}")
        print("\nverification")
        for check in result.checks:
            mark = "ok  " if check.ok else "FAIL"
            detail = f" ({check.detail})" if check.detail else ""
            print(f"  {mark} {check.name}{detail}")
        print(
            f"\nrun {result.run_id}: tables {result.table_prefix}*, "
            f"PKI container {result.pki_container}, key backend {result.backend}"
        )
        if args.report is not None:
            print(f"report written to {args.report}")
    if not result.ok:
        for check in result.checks:
            if not check.ok:
                print(f"verification failed: {check.name} {check.detail}".rstrip(), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _drop_previous_run(settings: Settings, home: Path) -> None:
    """Only the last demo run's storage is kept (for ``certroll report``): Azurite keeps
    every table in one file it rewrites as it grows, so old runs slow new ones down."""
    from local.stack import drop_run_storage, run_settings

    marker = home / LAST_RUN_FILE
    if not marker.is_file():
        return
    previous = marker.read_text(encoding="utf-8").strip()
    try:
        drop_run_storage(run_settings(settings, previous))
    except InvalidRequestError:
        logger.warning("ignoring the unreadable demo run marker %s", marker)
    marker.unlink()


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LedgerSnapshot:
    before: list[datetime]
    before_at: datetime
    after: list[datetime]
    after_at: datetime
    devices: int
    certificates: int
    renewed: int
    revoked: int


def ledger_snapshot(rows: list[dict[str, Any]], now: datetime) -> LedgerSnapshot:
    """Per device, the newest certificate in use (after) and the one it replaced (before),
    from ledger certificate rows (``device_id``, ``not_after``, ``issued_at``, ``status``)."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_device[row["device_id"]].append(row)
    before: list[datetime] = []
    after: list[datetime] = []
    renewal_times: list[datetime] = []
    revoked = 0
    for records in by_device.values():
        records.sort(key=lambda r: r["issued_at"])
        usable = [r for r in records if r["status"] != "revoked"]
        revoked += len(records) - len(usable)
        if not usable:
            continue
        after.append(usable[-1]["not_after"])
        if len(usable) > 1:
            before.append(usable[-2]["not_after"])
            renewal_times.append(usable[-1]["issued_at"])
        else:
            before.append(usable[-1]["not_after"])
    return LedgerSnapshot(
        before=before,
        before_at=min(renewal_times, default=now),
        after=after,
        after_at=now,
        devices=len(by_device),
        certificates=len(rows),
        renewed=len(renewal_times),
        revoked=revoked,
    )


def read_ledger_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every certificate row of the ledger table (``RK=cert-<csr sha256>`` rows)."""
    from azure.core.exceptions import ResourceNotFoundError

    from shared.adapters.storage_clients import table_names, table_service

    ledger_name = table_names(settings)[0]
    client = table_service(settings).get_table_client(ledger_name)
    fields = ["device_id", "not_after", "issued_at", "status"]
    try:
        entities = list(
            client.query_entities("RowKey ge 'cert-' and RowKey lt 'cert.'", select=fields)
        )
    except ResourceNotFoundError:
        raise NotFoundError(f"no ledger table {ledger_name}") from None
    rows = []
    for e in entities:
        rows.append(
            {
                "device_id": str(e["device_id"]),
                "not_after": _aware(e["not_after"]),
                "issued_at": _aware(e["issued_at"]),
                "status": str(e["status"]),
            }
        )
    return rows


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidRequestError("ledger_row_invalid", f"expected a datetime, got {value!r}")
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html", type=Path, required=True, metavar="FILE", help="write the HTML report to FILE"
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="the demo run whose storage to read (default: the last demo run when there "
        "is one, else the configured storage; 'none': the configured storage)",
    )


def report_settings(settings: Settings, run_id: str | None) -> tuple[Settings, str]:
    """(settings of the storage to report on, a description of it): a demo run's tables
    and PKI (``run_id``, or the last run when None and there is one), else the configured
    storage (Azure with ``CERTROLL_STORAGE__*ServiceUri``, or Azurite)."""
    from local.stack import run_settings

    if run_id is None:
        marker = demo_home(settings) / LAST_RUN_FILE
        if marker.is_file():
            run_id = marker.read_text(encoding="utf-8").strip()
    if run_id is None or run_id == "none":
        prefix = settings.get("CERTROLL_TABLE_PREFIX")
        return settings, f"tables {prefix}* of the configured storage"
    source = run_settings(_settings_with_home(settings, demo_home(settings)), run_id)
    return source, f"demo run {run_id} (tables {source.get('CERTROLL_TABLE_PREFIX')}*)"


def _run_report(args: argparse.Namespace) -> int:
    from local.report import render_fleet_report
    from shared.bootstrap import Services
    from shared.observability import snapshot_of

    source, description = report_settings(Settings.from_env(), args.run_id)
    services = Services(source)
    snapshot = snapshot_of(services, datetime.now(UTC))
    if not snapshot.devices and not snapshot.certificates:
        raise NotFoundError(f"{description}: no device and no certificate")
    args.html.write_text(render_fleet_report(snapshot, source=description), encoding="utf-8")
    print(f"report for {snapshot.devices} devices written to {args.html}")
    return EXIT_OK


register_command(
    "serve",
    "run the local stack (dev host, emulator, pumps) until Ctrl-C",
    _configure_serve,
    _run_serve,
)
register_command(
    "demo",
    "rotate a simulated fleet end to end on the local stack and verify",
    _configure_demo,
    _run_demo,
)
register_command(
    "report",
    "write the HTML fleet report from the configured storage (or a demo run's)",
    _configure_report,
    _run_report,
)
