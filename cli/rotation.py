"""``certroll disallow``, ``allow``, ``renew``, ``status`` and ``sweep``: the operator
commands, the same service calls as the HTTP API. The actor recorded for every change is
``cli:<os user>`` (or ``cli:<--actor>``)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from cli.common import Command, cli_actor, json_arg, print_result, services
from cli.exits import ExitCode
from shared.domain.commands import Allow, Disallow, StartRenewal, Status, Sweep
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import check_device_id
from shared.domain.model import RotationState, Trigger

MAX_REASON_LENGTH = 500
RENEW_REASONS = (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL, Trigger.EXPIRING)


def run_disallow(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    reason = (args.reason or "").strip()
    if not reason:
        raise InvalidRequestError("reason_required", "--reason must not be empty")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            "reason_too_long",
            f"--reason has {len(reason)} characters; at most {MAX_REASON_LENGTH} are allowed",
        )
    result = services().rotation.disallow(Disallow(device_id, reason, cli_actor(args.actor)))
    print_result(result, args.json)
    return ExitCode.OK


def read_csr_file(path: str, device_id: str, max_bytes: int) -> str:
    """The PEM CSR in ``path``, framing and size only: the issuer applies the policy.

    Raises InvalidRequestError (``csr_unreadable``, ``csr_too_large``, ``csr_invalid``)
    before anything is changed.
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
    return text


def run_allow(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    wired = services()
    csr_pem = None
    max_bytes = wired.settings.int("CERTROLL_CSR_MAX_BYTES")
    if args.csr is not None:
        csr_pem = read_csr_file(args.csr, device_id, max_bytes)
    record = wired.rotation.allow(
        Allow.with_pem(device_id, cli_actor(args.actor), csr_pem, max_bytes=max_bytes)
    )
    print_result(record, args.json)
    return ExitCode.OK


def run_renew(args: argparse.Namespace) -> int:
    device_id = check_device_id(args.device_id)
    reason = Trigger(args.reason)
    record = services().rotation.start_renewal(
        StartRenewal(device_id, reason, cli_actor(args.actor))
    )
    print_result(record, args.json)
    return ExitCode.OK


def fleet_summary(state_store: Any) -> dict[str, Any]:
    """Device count per rotation state (every state listed, zero included)."""
    counts: Counter[str] = Counter()
    for record in state_store.list():
        counts[str(RotationState(record.state).value)] += 1
    states = {state.value: counts.get(state.value, 0) for state in RotationState}
    return {"total": sum(counts.values()), "states": states}


def run_status(args: argparse.Namespace) -> int:
    wired = services()
    if args.device_id is None:
        summary = fleet_summary(wired.state)
        if args.json:
            print_result(summary, True)
        else:
            width = max(len(s) for s in summary["states"])
            for state, count in summary["states"].items():
                sys.stdout.write(f"{state:<{width}}  {count}\n")
            sys.stdout.write(f"{'total':<{width}}  {summary['total']}\n")
        return ExitCode.OK
    device_id = check_device_id(args.device_id)
    print_result(wired.rotation.status(Status(device_id)), args.json)
    return ExitCode.OK


def run_sweep(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.batch_size > 1000:
        raise InvalidRequestError("batch_size_invalid", "--batch-size must be 1-1000")
    plan = services().rotation.sweep(Sweep(args.dry_run, args.batch_size))
    if not args.json and args.dry_run:
        sys.stdout.write("dry run: nothing was changed\n")
    print_result(plan, args.json)
    return ExitCode.OK


# --------------------------------------------------------------------------- arguments


def _device_arg(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    if optional:
        parser.add_argument("device_id", nargs="?", metavar="ID", help="device id (omit: fleet)")
    else:
        parser.add_argument("device_id", metavar="ID", help="IoT Hub device id")


def _actor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor", help="name recorded in the audit log as cli:<name> (default: the OS user)"
    )


def configure_disallow(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument("--reason", required=True, help="why (1-500 characters, audited)")
    _actor_arg(parser)
    json_arg(parser)


def configure_allow(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument(
        "--csr",
        metavar="FILE",
        help="a PEM CSR made on the device (its identity is disabled, so certroll cannot "
        "ask it for one); checked against the issuing policy before anything changes",
    )
    _actor_arg(parser)
    json_arg(parser)


def configure_renew(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser)
    parser.add_argument(
        "--reason",
        default=Trigger.MANUAL.value,
        choices=[r.value for r in RENEW_REASONS],
        help="why the renewal is started (default: manual)",
    )
    _actor_arg(parser)
    json_arg(parser)


def configure_status(parser: argparse.ArgumentParser) -> None:
    _device_arg(parser, optional=True)
    json_arg(parser)


def configure_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--batch-size", type=int, default=100, help="devices per queue message")
    json_arg(parser)


COMMANDS: tuple[Command, ...] = (
    Command(
        "disallow",
        "disallow a device now (disable enrollment and identity, revoke)",
        configure_disallow,
        run_disallow,
    ),
    Command(
        "allow",
        "let a disallowed device back in with a new certificate",
        configure_allow,
        run_allow,
    ),
    Command("renew", "start a certificate renewal now", configure_renew, run_renew),
    Command(
        "status",
        "one device's rotation status, or the fleet by state",
        configure_status,
        run_status,
    ),
    Command("sweep", "run the fleet sweep (--dry-run: plan only)", configure_sweep, run_sweep),
)
