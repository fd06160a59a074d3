"""``certroll pki init``, ``issue``, ``revoke``, ``crl``, and the issuing CA's ceremony:
``pki issuing-csr``, ``pki sign-issuing``, ``pki verification-cert``.

Each ``cmd_*`` function takes the parsed arguments and the objects it works on (the
issuer, or settings), so tests can pass in-memory fakes; the ``run_*`` wrappers get
them from :func:`shared.bootstrap.get_services`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from cli.common import Command, cli_actor, services
from cli.exits import ExitCode
from shared.domain.errors import InvalidRequestError
from shared.domain.model import RevocationReason, Trigger
from shared.pki import ceremony
from shared.pki.authority import KEY_BACKENDS, load_signing_key
from shared.pki.issuer import Issuer
from shared.pki.local_ca import (
    ISSUING_CRL_NAME,
    ROOT_CRL_FILE,
    ROOT_CRL_NAME,
    init_pki,
    root_crl_url,
)
from shared.settings import Settings


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
    _configure_ceremony(sub)


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
    return ExitCode.OK


def run_pki(args: argparse.Namespace) -> int:
    if args.pki_command == "init":
        return cmd_pki_init(args, Settings.from_env())
    if args.pki_command == "issuing-csr":
        subject = ceremony.parse_subject(args.subject)  # bad input fails before the HSM
        return _with_signing_key(
            args, lambda key, key_id: cmd_issuing_csr(args, key, subject, key_id)
        )
    if args.pki_command == "sign-issuing":
        return cmd_sign_issuing(args)
    if args.pki_command == "revoke-issuing":
        return cmd_revoke_issuing(args)
    if args.pki_command == "verification-cert":
        ceremony.check_verification_code(args.code)
        ca_cert = _read_certificate(args.ca_cert, "CA certificate")
        return _with_signing_key(args, lambda key, _: cmd_verification_cert(args, key, ca_cert))
    raise InvalidRequestError("command_invalid", f"unknown pki action {args.pki_command!r}")


# --------------------------------------------------------------------------- ceremony


def _configure_ceremony(sub: Any) -> None:
    backend_help = "where the issuing key lives (default: CERTROLL_KEY_BACKEND)"
    csr = sub.add_parser(
        "issuing-csr",
        help="CSR for the issuing CA, signed by the configured issuing key",
        description="Write a CSR for the issuing CA (CA:true, pathlen 0) signed through the "
        "configured key backend; the private key never leaves the key store.",
    )
    csr.add_argument("--out", required=True, help="where to write the CSR (PEM)")
    csr.add_argument(
        "--subject",
        default=ceremony.DEFAULT_ISSUING_SUBJECT,
        help=f"RFC 4514 subject (default: {ceremony.DEFAULT_ISSUING_SUBJECT!r})",
    )
    csr.add_argument("--backend", choices=KEY_BACKENDS, default=None, help=backend_help)

    sign = sub.add_parser(
        "sign-issuing",
        help="offline root: sign the issuing CA CSR",
        description="On the offline root machine: check the issuing CA CSR and sign it with "
        "the root key (CA:true pathlen 0, keyCertSign+cRLSign, SKI, AKI).",
    )
    sign.add_argument("--csr", required=True, help="the issuing CA CSR (PEM or DER)")
    sign.add_argument("--root-cert", required=True, help="the root CA certificate (PEM)")
    sign.add_argument("--root-key", required=True, help="the root CA private key (PEM)")
    sign.add_argument(
        "--root-key-password-file", default=None, help="file holding the root key's password"
    )
    sign.add_argument(
        "--days",
        type=int,
        default=ceremony.DEFAULT_ISSUING_DAYS,
        help=f"validity in days (default {ceremony.DEFAULT_ISSUING_DAYS}; never past the root)",
    )
    sign.add_argument(
        "--crl-base-url",
        default="",
        help="public base URL of the PKI container: adds a CRL distribution point "
        "<base>/crl/root.crl",
    )
    sign.add_argument("--out", required=True, help="where to write the issuing CA certificate")

    rev = sub.add_parser(
        "revoke-issuing",
        help="offline root: a root CRL revoking an issuing CA (CA-roll compromise mode)",
        description="On the offline root machine: sign a new root CRL that keeps the "
        "entries of the current one and lists the issuing CA (reason cACompromise).",
    )
    rev.add_argument("--issuing-cert", required=True, help="the issuing CA to revoke (PEM)")
    rev.add_argument("--root-cert", required=True, help="the root CA certificate (PEM)")
    rev.add_argument("--root-key", required=True, help="the root CA private key (PEM)")
    rev.add_argument(
        "--root-key-password-file", default=None, help="file holding the root key's password"
    )
    rev.add_argument("--root-crl", default=None, help="the current root CRL (DER or PEM)")
    rev.add_argument("--out", required=True, help="where to write the new root CRL (DER)")

    ver = sub.add_parser(
        "verification-cert",
        help="proof-of-possession certificate for DPS / IoT Hub",
        description="Write a certificate with subject CN=<verification code>, signed by the "
        "CA's key through the configured key backend, valid for one day.",
    )
    ver.add_argument("--ca-cert", required=True, help="the CA certificate being verified (PEM)")
    ver.add_argument("--code", required=True, help="the verification code from DPS / IoT Hub")
    ver.add_argument("--out", required=True, help="where to write the certificate (PEM)")
    ver.add_argument("--backend", choices=KEY_BACKENDS, default=None, help=backend_help)


def _read_input(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequestError(
            "file_unreadable", f"cannot read the {what} {path}: {exc.strerror}"
        ) from exc


def _read_certificate(path: str, what: str) -> x509.Certificate:
    return ceremony.load_certificate(_read_input(path, what), what)


def _write_new_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once (a temporary file renamed into place)."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise InvalidRequestError(
            "output_unwritable", f"cannot write {path}: {exc.strerror}"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _with_signing_key(
    args: argparse.Namespace, run: Callable[[CertificateIssuerPrivateKeyTypes, str], int]
) -> int:
    """Run ``run(key, key id)`` with the configured issuing key, closing it afterwards."""
    key, key_id = load_signing_key(Settings.from_env(), args.backend)
    try:
        return run(key, key_id)
    finally:
        close = getattr(key, "close", None)
        if callable(close):
            close()


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def cmd_issuing_csr(
    args: argparse.Namespace,
    key: CertificateIssuerPrivateKeyTypes,
    subject: x509.Name,
    key_id: str = "",
) -> int:
    csr = ceremony.build_issuing_csr(key, subject)
    _write_new_file(args.out, csr.public_bytes(serialization.Encoding.PEM))
    print(f"issuing CA CSR {csr.subject.rfc4514_string()} (key {key_id}) -> {args.out}")
    return ExitCode.OK


def cmd_sign_issuing(args: argparse.Namespace, now: datetime | None = None) -> int:
    csr = ceremony.load_csr(_read_input(args.csr, "CSR"))
    root_cert = _read_certificate(args.root_cert, "root certificate")
    password = None
    if args.root_key_password_file:
        password = _read_input(args.root_key_password_file, "password file").rstrip(b"\r\n")
    root_key = ceremony.load_private_key(_read_input(args.root_key, "root key"), password)
    issuing = ceremony.sign_issuing_csr(
        csr,
        root_cert,
        root_key,
        now=now or datetime.now(UTC),
        days=args.days,
        root_crl_url=root_crl_url(args.crl_base_url),
    )
    _write_new_file(args.out, issuing.public_bytes(serialization.Encoding.PEM))
    print(f"issuing CA {issuing.subject.rfc4514_string()} -> {args.out}")
    print(f"  serial   {issuing.serial_number:x}")
    print(
        f"  valid    {issuing.not_valid_before_utc.isoformat()} .. "
        f"{issuing.not_valid_after_utc.isoformat()}"
    )
    print(f"  sha256   {_fingerprint(issuing)}")
    return ExitCode.OK


def cmd_revoke_issuing(args: argparse.Namespace, now: datetime | None = None) -> int:
    from shared.pki.ca_roll import build_root_crl

    issuing = _read_certificate(args.issuing_cert, "issuing CA certificate")
    root_cert = _read_certificate(args.root_cert, "root certificate")
    password = None
    if args.root_key_password_file:
        password = _read_input(args.root_key_password_file, "password file").rstrip(b"\r\n")
    root_key = ceremony.load_private_key(_read_input(args.root_key, "root key"), password)
    ceremony.check_root(root_cert, root_key, now or datetime.now(UTC))
    previous = None
    if args.root_crl:
        data = _read_input(args.root_crl, "root CRL")
        try:
            previous = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(data)
            )
        except ValueError as exc:
            raise InvalidRequestError("crl_malformed", "the root CRL is not a CRL") from exc
    when = now or datetime.now(UTC)
    crl = build_root_crl(root_cert, root_key, [(issuing, when)], now=when, previous=previous)
    _write_new_file(args.out, crl.public_bytes(serialization.Encoding.DER))
    print(f"root CRL revoking {issuing.subject.rfc4514_string()} ({issuing.serial_number:x})")
    print(f"  -> {args.out}: give it to `certroll ca roll retire --root-crl {args.out}`")
    return ExitCode.OK


def cmd_verification_cert(
    args: argparse.Namespace,
    key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    now: datetime | None = None,
) -> int:
    cert = ceremony.build_verification_certificate(
        ca_cert, key, args.code, now=now or datetime.now(UTC)
    )
    _write_new_file(args.out, cert.public_bytes(serialization.Encoding.PEM))
    print(f"verification certificate CN={args.code} -> {args.out}")
    return ExitCode.OK


# --------------------------------------------------------------------------- issue


def configure_issue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-id", required=True, help="the device id (the CSR's CN)")
    parser.add_argument("--csr", required=True, help="CSR file (PEM or DER), '-' for stdin")
    parser.add_argument("--out", help="write the chain PEM (leaf, issuing CA) here")
    parser.add_argument(
        "--request-id",
        default=None,
        help="idempotency/request id (default: one per device and CSR file content)",
    )
    parser.add_argument("--json", action="store_true", help="print certificate facts as JSON")


def _cli_request_id(device_id: str, csr: bytes) -> str:
    return "cli-" + hashlib.sha256(device_id.encode() + b"\0" + csr).hexdigest()[:32]


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
        # the same command run again is the same request (and gets the same certificate);
        # the CSR of another request is refused (key_reused)
        request_id=args.request_id or _cli_request_id(args.device_id, csr),
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
    return ExitCode.OK


def run_issue(args: argparse.Namespace) -> int:
    return cmd_issue(args, services().issuer)


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
    return ExitCode.OK


def run_revoke(args: argparse.Namespace) -> int:
    return cmd_revoke(args, services().issuer)


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
    return ExitCode.OK


def run_crl(args: argparse.Namespace) -> int:
    return cmd_crl(args, services().issuer)


COMMANDS: tuple[Command, ...] = (
    Command("pki", "manage the local PKI (root and issuing CA)", configure_pki, run_pki),
    Command("issue", "issue a device certificate from a CSR", configure_issue, run_issue),
    Command("revoke", "revoke a certificate by serial", configure_revoke, run_revoke),
    Command("crl", "build and publish the CRL", configure_crl, run_crl),
)
