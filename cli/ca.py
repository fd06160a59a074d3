"""``certroll ca roll STEP`` and ``certroll ca status``: the issuing CA's roll
(docs/ca-roll.md), the same steps as ``POST /api/ca/roll/{step}``.

Steps in order: ``prepare`` (new key + CSR; ``--mode compromise`` for an emergency roll,
``--csr-out`` writes the CSR for the offline root), ``install`` (``--cert`` the
certificate the root signed; without it a local root signs, development only),
``verify`` (DPS and IoT Hub proof of possession; in Azure with ``--dps-resource-id`` and
``--hub-resource-id`` and the operator's Azure credential), ``trust``, ``reissue``,
``retire`` (``--force`` despite devices left; ``--root-crl`` the root CRL signed offline
in compromise mode). A step out of order exits 4 (``ca_roll_out_of_order``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.common import Command, cli_actor, json_arg, print_result, services
from cli.exits import ExitCode
from shared.domain.ca_roll import RollStep, parse_mode, parse_step
from shared.domain.errors import InvalidRequestError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequestError(
            "file_unreadable", f"cannot read the {what} {path}: {exc.strerror}"
        ) from exc


def step_options(step: RollStep, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of ``step`` from the command line."""
    if step is RollStep.PREPARE:
        return {"mode": parse_mode(args.mode), "subject": args.subject}
    if step is RollStep.INSTALL:
        pem = _read(args.cert, "certificate").decode("ascii") if args.cert else None
        return {"certificate_pem": pem, "days": args.days}
    if step is RollStep.RETIRE:
        crl = _read(args.root_crl, "root CRL") if args.root_crl else None
        if crl is not None and crl.lstrip().startswith(b"-----BEGIN"):
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            crl = x509.load_pem_x509_crl(crl).public_bytes(Encoding.DER)
        return {"force": args.force, "root_crl_der": crl}
    return {}


def ca_roll_service(args: argparse.Namespace) -> Any:
    """The wired CA roll; with ``--dps-resource-id``/``--hub-resource-id`` the verify step
    reaches the services' CA certificates through Azure Resource Manager."""
    wired = services()
    if getattr(args, "dps_resource_id", None) or getattr(args, "hub_resource_id", None):
        from shared.adapters.arm_certificates import ArmCaCertificates

        if not (args.dps_resource_id and args.hub_resource_id):
            raise InvalidRequestError(
                "resource_id_missing", "give both --dps-resource-id and --hub-resource-id"
            )
        wired.__dict__.pop("ca_roll", None)
        wired.__dict__["ca_certificate_services"] = (
            ArmCaCertificates(args.dps_resource_id, wired.credential),
            ArmCaCertificates(args.hub_resource_id, wired.credential),
        )
    return wired.ca_roll


def run_roll(args: argparse.Namespace) -> int:
    step = parse_step(args.step)
    options = step_options(step, args)
    result = ca_roll_service(args).run(step, cli_actor(args.actor), **options)
    if step is RollStep.PREPARE and args.csr_out:
        Path(args.csr_out).write_text(result.record.new.csr_pem or "", encoding="ascii")
    print_result(result.to_dict(), args.json)
    return ExitCode.OK


def run_status(args: argparse.Namespace) -> int:
    roll = services().ca_roll
    record = roll.status()
    out: dict[str, Any] = {"roll": record.to_dict()}
    campaign = roll.campaign(record)
    if campaign is not None:
        out["campaign"] = campaign.to_dict()
    if args.remaining:
        left = roll.remaining(record)
        out["remaining"] = {"devices": len(left), "sample": left[:10]}
    print_result(out, args.json)
    return ExitCode.OK


def configure_ca(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    roll = sub.add_parser(
        "roll",
        help="run one step of the issuing CA's roll",
        description="Run one step of the roll to a new issuing CA: prepare, install, "
        "verify, trust, reissue, retire (docs/ca-roll.md).",
    )
    roll.add_argument("step", choices=[s.value for s in RollStep], help="the step to run")
    roll.add_argument("--actor", default=None, help="name recorded in the audit log")
    roll.add_argument(
        "--mode", default="normal", choices=("normal", "compromise"), help="prepare: roll mode"
    )
    roll.add_argument("--subject", default=None, help="prepare: subject of the new CA")
    roll.add_argument("--csr-out", default=None, help="prepare: write the CSR to this file")
    roll.add_argument("--cert", default=None, help="install: the certificate the root signed")
    roll.add_argument("--days", type=int, default=1825, help="install (local root): validity")
    roll.add_argument("--dps-resource-id", default=None, help="verify: the DPS ARM resource id")
    roll.add_argument("--hub-resource-id", default=None, help="verify: the hub ARM resource id")
    roll.add_argument("--force", action="store_true", help="retire even if devices are left")
    roll.add_argument("--root-crl", default=None, help="retire (compromise): the root CRL")
    json_arg(roll)
    roll.set_defaults(func=run_roll)
    status = sub.add_parser(
        "status", help="the CA roll's record", description="Print the CA roll's record."
    )
    status.add_argument(
        "--remaining", action="store_true", help="count the devices still on the old CA"
    )
    json_arg(status)
    status.set_defaults(func=run_status)


def run_ca(args: argparse.Namespace) -> int:  # pragma: no cover - argparse routes
    raise InvalidRequestError("ca_action", "name an action: roll, status")


COMMANDS: tuple[Command, ...] = (
    Command("ca", "the issuing CA's roll to a new CA", configure_ca, run_ca),
)
