"""PKI subcommands of ``certroll``: ``pki init``, ``issue``, ``revoke``, ``crl``.

Each ``cmd_*`` function takes the parsed arguments and the objects it works on (the
issuer, or settings), so tests can pass in-memory fakes; the ``run_*`` wrappers get
them from :func:`shared.bootstrap.get_services`.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.cli import EXIT_OK, cli_actor, register_command
from shared.domain.errors import InvalidRequestError
from shared.domain.model import RevocationReason, Trigger
from shared.pki.issuer import Issuer
from shared.pki.local_ca import ISSUING_CRL_NAME, ROOT_CRL_FILE, ROOT_CRL_NAME, init_pki
from shared.settings import Settings


def _services() -> Any:
    from shared.bootstrap import get_services

    return get_services()


def _write_output(path: str | None, data: bytes) -> None:
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    Path(path).write_bytes(data)


# --------------------------------------------------------------------------- pki init


def configure_pki(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create the local root and issuing CA")
    init.add_argument(
        "--backend",
        choices=("file", "pkcs11"),
        default=None,
        help="where the issuing key lives (default: CERTROLL_KEY_BACKEND when file/pkcs11)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing PKI")
    init.add_argument(
        "--crl-base-url",
        default=None,
        help="public base URL of the PKI container (default: CERTROLL_CRL_BASE_URL)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_pki_init(args: argparse.Namespace, settings: Settings) -> int:
    backend = args.backend
    if backend is None:
        configured = settings.get("CERTROLL_KEY_BACKEND")
        backend = configured if configured in ("file", "pkcs11") else "file"
    crl_base = (
        args.crl_base_url
        if args.crl_base_url is not None
        else settings.get("CERTROLL_CRL_BASE_URL")
    )
    files = init_pki(settings.home, backend, args.force, crl_base, settings=settings)
    if args.json:
        print(json.dumps(files.to_dict(), indent=2))
    else:
        print(f"root CA:    {files.root_certificate}")
        print(f"issuing CA: {files.issuing_certificate} (key: {files.key_id})")
    return EXIT_OK


def run_pki(args: argparse.Namespace) -> int:
    if args.pki_command == "init":
        return cmd_pki_init(args, Settings.from_env())
    raise InvalidRequestError("command_invalid", f"unknown pki action {args.pki_command!r}")


# --------------------------------------------------------------------------- issue


def configure_issue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-id", required=True, help="the device id (the CSR's CN)")
    parser.add_argument("--csr", required=True, help="CSR file (PEM or DER), '-' for stdin")
    parser.add_argument("--out", help="write the chain PEM (leaf, issuing CA) here")
    parser.add_argument("--request-id", default=None, help="idempotency/request id")
    parser.add_argument("--json", action="store_true", help="print certificate facts as JSON")


def cmd_issue(args: argparse.Namespace, issuer: Issuer) -> int:
    try:
        csr = sys.stdin.buffer.read() if args.csr == "-" else Path(args.csr).read_bytes()
    except OSError as exc:
        raise InvalidRequestError(
            "csr_unreadable", f"cannot read {args.csr}: {exc.strerror}"
        ) from exc
    issued = issuer.issue(
        args.device_id,
        csr,
        request_id=args.request_id or f"cli-{uuid.uuid4()}",
        trigger=Trigger.CLI.value,
        actor=cli_actor(),
    )
    if args.out:
        _write_output(args.out, issued.chain_pem.encode("ascii"))
    rec = issued.record
    if args.json:
        print(
            json.dumps(
                {
                    "deviceId": rec.device_id,
                    "serialNumber": rec.serial,
                    "thumbprintSha256": rec.thumbprint_sha256,
                    "notBefore": rec.not_before.isoformat(),
                    "notAfter": rec.not_after.isoformat(),
                    "reused": issued.reused,
                },
                indent=2,
            )
        )
    elif not args.out:
        _write_output(None, issued.chain_pem.encode("ascii"))
    return EXIT_OK


def run_issue(args: argparse.Namespace) -> int:
    return cmd_issue(args, _services().issuer)


# --------------------------------------------------------------------------- revoke


def configure_revoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serial", required=True, help="certificate serial (hex)")
    parser.add_argument(
        "--reason",
        default=RevocationReason.UNSPECIFIED.value,
        choices=[r.value for r in RevocationReason],
        help="RFC 5280 reason (default: unspecified)",
    )
    parser.add_argument("--json", action="store_true")


def cmd_revoke(args: argparse.Namespace, issuer: Issuer) -> int:
    record = issuer.revoke(args.serial, args.reason, cli_actor())
    reason = record.revocation_reason.value if record.revocation_reason else args.reason
    if args.json:
        print(
            json.dumps(
                {
                    "serialNumber": record.serial,
                    "deviceId": record.device_id,
                    "status": record.status.value,
                    "reason": reason,
                    "revokedAt": record.revoked_at.isoformat() if record.revoked_at else None,
                }
            )
        )
    else:
        print(f"revoked {record.serial} of {record.device_id} ({reason})")
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    return cmd_revoke(args, _services().issuer)


# --------------------------------------------------------------------------- crl


def configure_crl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", help="also write the CRL here (PEM when the name ends in .pem, else DER)"
    )
    parser.add_argument("--next-update-hours", type=int, default=24)
    parser.add_argument("--json", action="store_true")


def cmd_crl(args: argparse.Namespace, issuer: Issuer, settings: Settings | None = None) -> int:
    if not 1 <= args.next_update_hours <= 744:
        raise InvalidRequestError("next_update_invalid", "--next-update-hours must be 1-744")
    url = issuer.publish_crl(args.next_update_hours)
    publisher = issuer.crl_publisher
    assert publisher is not None  # publish_crl raised otherwise
    root_crl = (settings or Settings.from_env()).pki_dir / ROOT_CRL_FILE
    root_url = None
    if root_crl.is_file():
        root_url = publisher.publish(ROOT_CRL_NAME, root_crl.read_bytes(), "application/pkix-crl")
    der = publisher.fetch(ISSUING_CRL_NAME)
    crl = x509.load_der_x509_crl(der)
    if args.out:
        data = crl.public_bytes(serialization.Encoding.PEM) if args.out.endswith(".pem") else der
        _write_output(args.out, data)
    if args.json:
        print(json.dumps({"url": url, "rootCrlUrl": root_url, "revoked": len(crl)}))
    else:
        print(f"published {url} ({len(crl)} revoked)")
    return EXIT_OK


def run_crl(args: argparse.Namespace) -> int:
    return cmd_crl(args, _services().issuer)


register_command("pki", "manage the local PKI (root and issuing CA)", configure_pki, run_pki)
register_command("issue", "issue a device certificate from a CSR", configure_issue, run_issue)
register_command("revoke", "revoke a certificate by serial", configure_revoke, run_revoke)
register_command("crl", "build and publish the CRL", configure_crl, run_crl)
