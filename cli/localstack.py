"""``certroll serve``, ``demo`` and ``report``: the local stack's commands.

The demo keeps its own PKI and run records under ``$CERTROLL_HOME/demo``; the id of the
last run is kept there so ``certroll report`` can find its ledger and the next run can
drop its storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from cli.common import Command
from cli.exits import ExitCode
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.settings import Settings

logger = logging.getLogger(__name__)

DEMO_DIR = "demo"
LAST_RUN_FILE = "last-run"


def demo_home(settings: Settings) -> Path:
    return settings.home.resolve() / DEMO_DIR


def _settings_with_home(settings: Settings, home: Path) -> Settings:
    values = dict(settings.values)
    values["CERTROLL_HOME"] = str(home)
    return Settings(values)


# --------------------------------------------------------------------------- serve


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (loopback)")
    parser.add_argument("--port", type=int, default=7071, help="dev host port (0: any free)")
    parser.add_argument(
        "--transport",
        choices=("inproc", "http", "https"),
        default="inproc",
        help="emulator in process, or production adapters over its REST API (http, or https "
        "with a loopback server certificate the adapters trust)",
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
    from local.serve import ServeOptions, run_serve

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
    run_serve(Settings.from_env(), options)
    return ExitCode.OK


# --------------------------------------------------------------------------- demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--transport",
        choices=("inproc", "http", "https"),
        default="inproc",
        help="emulator in process, or production adapters over its REST API (http, or https "
        "with a loopback server certificate the adapters trust)",
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
    parser.add_argument(
        "--ca-roll",
        action="store_true",
        help="move the fleet to a new issuing CA end to end (docs/ca-roll.md) instead of "
        "renewing expiring certificates",
    )
    parser.add_argument(
        "--ca-roll-mode",
        choices=("normal", "compromise"),
        default="normal",
        help="with --ca-roll: compromise mode revokes the old CA in the root CRL",
    )
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
        ca_roll=args.ca_roll,
        ca_roll_mode=args.ca_roll_mode,
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
        return ExitCode.FAILED
    return ExitCode.OK


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
    return ExitCode.OK


# --------------------------------------------------------------------------- token


def _configure_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", default="operator@certroll.local", help="user (or, with --app, app) name"
    )
    parser.add_argument("--app", action="store_true", help="an app-only (client credentials) token")
    parser.add_argument(
        "--role",
        action="append",
        default=None,
        help="app role in 'roles' (repeatable; default: CERTROLL_OPERATOR_ROLE)",
    )
    parser.add_argument("--no-role", action="store_true", help="a token without any app role")
    parser.add_argument("--v1", action="store_true", help="the v1 token form (sts.windows.net)")
    parser.add_argument("--minutes", type=int, default=60, help="lifetime (default 60)")


def _run_token(args: argparse.Namespace) -> int:
    from local.token_issuer import LocalTokenIssuer

    if not 1 <= args.minutes <= 24 * 60:
        raise InvalidRequestError("argument_invalid", "--minutes must be within 1..1440")
    settings = Settings.from_env()
    roles: tuple[str, ...] = ()
    if not args.no_role:
        roles = tuple(args.role or [settings.get("CERTROLL_OPERATOR_ROLE")])
    issuer = LocalTokenIssuer(settings.home.resolve())
    print(
        issuer.mint(
            args.name,
            roles,
            app=args.app,
            version="1.0" if args.v1 else "2.0",
            lifetime=args.minutes * 60,
        )
    )
    return ExitCode.OK


COMMANDS: tuple[Command, ...] = (
    Command(
        "serve",
        "run the local stack (dev host, emulator, pumps) until Ctrl-C",
        _configure_serve,
        _run_serve,
    ),
    Command(
        "demo",
        "rotate a simulated fleet end to end on the local stack and verify",
        _configure_demo,
        _run_demo,
    ),
    Command(
        "report",
        "write the HTML fleet report from the configured storage (or a demo run's)",
        _configure_report,
        _run_report,
    ),
    Command(
        "token",
        "print an operator access token of the local token issuer (for certroll serve)",
        _configure_token,
        _run_token,
    ),
)
