"""``certroll`` subcommands for rotation: disallow, allow, renew, status, sweep.

Each command gets the wired services from :func:`shared.bootstrap.get_services` (tests
and the local host replace them with ``override_services``) and returns an exit code
(the same as :mod:`shared.cli`): 0 ok, 2 bad input or refused (disallowed device),
3 unknown device, 4 conflict or throttled (try again later), 1 any other failure.
The actor recorded for every change is ``cli:<os user>`` (or ``cli:<--actor>``).

``shared.cli`` imports this module and calls :func:`register`.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import getpass
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.domain.commands import Allow, Disallow, StartRenewal, Status, Sweep
from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ThrottledError,
)
from shared.domain.messages import check_device_id
from shared.domain.model import RotationState, Trigger
from shared.pki.csr_policy import check_csr

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
EXIT_NOT_FOUND = 3
EXIT_RETRY = 4

MAX_REASON_LENGTH = 500
RENEW_REASONS = (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL, Trigger.EXPIRING)

Runner = Callable[[argparse.Namespace], int]


def cli_actor(name: str | None = None) -> str:
    """``cli:<name>``, by default the operating-system user running the command."""
    if name:
        return name if name.startswith("cli:") else f"cli:{name}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER") or "unknown"
    return f"cli:{user}"


def _services() -> Any:
    from shared.bootstrap import get_services

    return get_services()


def jsonable(value: Any) -> Any:
    """A service result (``to_dict()``, dataclass, enum, datetime ...) as JSON data."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in ("etag", "csr_pem")
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def _print_result(data: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    _print_text(data, out, indent=0)


def _print_text(data: Any, out: TextIO, indent: int) -> None:
    pad = "  " * indent
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                out.write(f"{pad}{key}:\n")
                _print_text(value, out, indent + 1)
            else:
                shown = "-" if value is None or value in ({}, []) else value
                out.write(f"{pad}{key}: {shown}\n")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict | list):
                out.write(f"{pad}-\n")
                _print_text(item, out, indent + 1)
            else:
                out.write(f"{pad}- {item}\n")
    else:
        out.write(f"{pad}{data}\n")


def _guarded(run: Runner) -> Runner:
    """Turn typed errors into a message on stderr and the documented exit code."""

    def wrapper(args: argparse.Namespace) -> int:
        err: TextIO = getattr(args, "stderr", None) or sys.stderr
        try:
            return run(args)
        except InvalidRequestError as exc:
            err.write(f"rejected: {exc.code}: {exc.message}\n")
            return EXIT_REJECTED
        except CsrRejectedError as exc:
            err.write(f"rejected: {exc.code}: {exc.message}\n")
            return EXIT_REJECTED
        except DeviceDisallowedError as exc:
            err.write(f"refused: {exc}\n")
            return EXIT_REJECTED
        except (ConflictError, ConcurrencyError) as exc:
            err.write(f"conflict: {exc}; try again\n")
            return EXIT_RETRY
        except NotFoundError as exc:
            err.write(f"not found: {exc}\n")
            return EXIT_NOT_FOUND
        except ThrottledError as exc:
            err.write(f"throttled: {exc}; try again in {exc.retry_after:g} s\n")
            return EXIT_RETRY
        except CertrollError as exc:
            err.write(f"failed: {exc}\n")
            return EXIT_FAILED

    wrapper.__name__ = run.__name__
    wrapper.__doc__ = run.__doc__
    return wrapper


def _out(args: argparse.Namespace) -> TextIO:
    out: TextIO = getattr(args, "stdout", None) or sys.stdout
    return out


# --------------------------------------------------------------------------- commands


@_guarded
def run_disallow(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    reason = (args.reason or "").strip()
    if not reason:
        raise InvalidRequestError("reason_required", "--reason must not be empty")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            "reason_too_long", f"--reason has {len(reason)} characters; at most 500 are allowed"
        )
    result = _services().rotation.disallow(Disallow(device_id, reason, cli_actor(args.actor)))
    _print_result(jsonable(result), args.json, _out(args))
    return EXIT_OK


def read_csr_file(path: str, device_id: str, max_bytes: int) -> str:
    """The PEM CSR in ``path``, checked against the issuing policy for ``device_id``.

    Raises InvalidRequestError (``csr_unreadable``, ``csr_too_large``, ``csr_invalid``)
    or CsrRejectedError (the issuing policy's code) before anything is changed.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidRequestError(
            "csr_unreadable", f"--csr {path}: {exc.strerror or exc}"
        ) from None
    if len(data) > max_bytes:
        raise InvalidRequestError("csr_too_large", f"--csr {path} is larger than {max_bytes} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if "-----BEGIN CERTIFICATE REQUEST-----" not in text:
        raise InvalidRequestError(
            "csr_invalid", f"--csr {path} is not a PEM certificate request (openssl req -out)"
        )
    check_csr(device_id, text, max_bytes=max_bytes)
    return text


@_guarded
def run_allow(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    services = _services()
    csr_pem = None
    if args.csr is not None:
        max_bytes = services.settings.int("CERTROLL_CSR_MAX_BYTES")
        csr_pem = read_csr_file(args.csr, device_id, max_bytes)
    record = services.rotation.allow(Allow.with_pem(device_id, cli_actor(args.actor), csr_pem))
    _print_result(jsonable(record), args.json, _out(args))
    return EXIT_OK


@_guarded
def run_renew(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    reason = Trigger(args.reason)
    command = StartRenewal(device_id, reason, cli_actor(args.actor))
    record = _services().rotation.start_renewal(command)
    _print_result(jsonable(record), args.json, _out(args))
    return EXIT_OK


def fleet_summary(state_store: Any) -> dict[str, Any]:
    """Device count per rotation state (every state listed, zero included)."""
    counts: Counter[str] = Counter()
    for record in state_store.list():
        counts[str(RotationState(record.state).value)] += 1
    states = {state.value: counts.get(state.value, 0) for state in RotationState}
    return {"total": sum(counts.values()), "states": states}


@_guarded
def run_status(args: argparse.Namespace) -> int:
    services = _services()
    out = _out(args)
    if args.device_id is None:
        summary = fleet_summary(services.state)
        if args.json:
            _print_result(summary, True, out)
        else:
            width = max(len(s) for s in summary["states"])
            for state, count in summary["states"].items():
                out.write(f"{state:<{width}}  {count}\n")
            out.write(f"{'total':<{width}}  {summary['total']}\n")
        return EXIT_OK
    device_id = check_device_id(args.device_id)
    view = services.rotation.status(Status(device_id))
    _print_result(jsonable(view), args.json, out)
    return EXIT_OK


@_guarded
def run_sweep(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.batch_size > 1000:
        raise InvalidRequestError("batch_size_invalid", "--batch-size must be 1-1000")
    plan = _services().rotation.sweep(Sweep(args.dry_run, args.batch_size))
    data = jsonable(plan)
    out = _out(args)
    if not args.json and args.dry_run:
        out.write("dry run: nothing was changed\n")
    _print_result(data, args.json, out)
    return EXIT_OK


# --------------------------------------------------------------------------- registration


def _device_arg(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    if optional:
        parser.add_argument("device_id", nargs="?", metavar="ID", help="device id (omit: fleet)")
    else:
        parser.add_argument("device_id", metavar="ID", help="IoT Hub device id")


def _actor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor", help="name recorded in the audit log as cli:<name> (default: the OS user)"
    )


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def configure_disallow(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument("--reason", required=True, help="why (1-500 characters, audited)")
    _actor_arg(parser)
    _json_arg(parser)


def configure_allow(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument(
        "--csr",
        metavar="FILE",
        help="a PEM CSR made on the device (its identity is disabled, so certroll cannot "
        "ask it for one); checked against the issuing policy before anything changes",
    )
    _actor_arg(parser)
    _json_arg(parser)


def configure_renew(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument(
        "--reason",
        default=Trigger.MANUAL.value,
        choices=[r.value for r in RENEW_REASONS],
        help="why the renewal is started (default: manual)",
    )
    _actor_arg(parser)
    _json_arg(parser)


def configure_status(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser, optional=True)
    _json_arg(parser)


def configure_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--batch-size", type=int, default=100, help="devices per queue message")
    _json_arg(parser)


#: name -> (help, configure, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Runner]] = {
    "disallow": (
        "disallow a device now (disable enrollment and identity, revoke)",
        configure_disallow,
        run_disallow,
    ),
    "allow": ("let a disallowed device back in with a new certificate", configure_allow, run_allow),
    "renew": ("start a certificate renewal now", configure_renew, run_renew),
    "status": ("one device's rotation status, or the fleet by state", configure_status, run_status),
    "sweep": ("run the fleet sweep (--dry-run: plan only)", configure_sweep, run_sweep),
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the rotation subcommands to ``certroll``'s subparsers.

    Each parser gets ``run`` (and ``func``) defaults: ``args.run(args)`` returns the exit code.
    """
    for name, (help_text, configure, run) in COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        configure(parser)
        parser.set_defaults(run=run, func=run)


def main(argv: list[str] | None = None) -> int:
    """Run one rotation subcommand without the rest of ``certroll`` (``python -m``)."""
    parser = argparse.ArgumentParser(prog="certroll")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
