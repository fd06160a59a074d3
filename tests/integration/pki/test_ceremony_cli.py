"""``certroll pki issuing-csr / sign-issuing / verification-cert`` with every key backend."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.main import main
from shared.adapters import keyvault
from shared.adapters.memory import MemoryAuditLog, MemoryLedger
from shared.clock import SystemClock
from shared.pki.authority import load_authority
from shared.pki.issuer import Issuer
from shared.pki.local_ca import build_root_certificate
from shared.pki.profile import IssuancePolicy
from shared.settings import Settings
from tests.support.keyvault_standin import StaticCredential, Vault, serve_vault
from tests.support.pki import assert_is_device_leaf, make_csr, pkilint_certificate, write_pem
from tests.support.softhsm import KEY_BACKENDS, softhsm_conf

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
CODE = "3A0F55B2C1D94E7F8A6B"


@dataclass
class Home:
    home: Path
    work: Path

    @property
    def pki(self) -> Path:
        return self.home / "pki"

    def root_args(self) -> list[str]:
        return [
            "--root-cert",
            str(self.pki / "root.pem"),
            "--root-key",
            str(self.pki / "root-key.pem"),
            "--root-key-password-file",
            str(self.pki / "key-password"),
        ]


def _clean_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for name in (
        "CERTROLL_FILE_KEY_PASSWORD",
        "CERTROLL_ISSUING_CERT",
        "CERTROLL_PKCS11_PIN",
        "CERTROLL_KEYVAULT_KEY_ID",
        "SOFTHSM2_CONF",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CERTROLL_HOME", str(home))
    monkeypatch.setenv("CERTROLL_STORAGE", "memory")


@pytest.fixture(params=KEY_BACKENDS)
def local(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """A local PKI made by ``certroll pki init`` with the file or SoftHSM2 key backend."""
    backend: str = request.param
    home = tmp_path / "home"
    _clean_env(monkeypatch, home)
    monkeypatch.setenv("CERTROLL_KEY_BACKEND", backend)
    if backend == "pkcs11":
        monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
        monkeypatch.setenv("CERTROLL_PKCS11_TOKEN", f"c-{tmp_path.name[-20:]}")
    assert main(["pki", "init"]) == 0
    work = tmp_path / "work"
    work.mkdir()
    return Home(home, work)


def _csr_file(path: Path) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(path.read_bytes())


def _cert_file(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _issuing_key_public(h: Home) -> ec.EllipticCurvePublicKey:
    # pki init's issuing certificate holds the issuing key's public half
    public = _cert_file(h.pki / "issuing.pem").public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def test_ceremony_end_to_end(
    local: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    csr_path = local.work / "issuing.csr"
    subject = "CN=Fleet Issuing CA 2,O=Example"
    assert main(["pki", "issuing-csr", "--out", str(csr_path), "--subject", subject]) == 0
    assert str(csr_path) in capsys.readouterr().out
    csr = _csr_file(csr_path)
    assert csr.is_signature_valid
    assert csr.public_key() == _issuing_key_public(local)  # signed by the configured key
    assert csr.subject.rfc4514_string() == subject
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (bc.critical, bc.value.ca, bc.value.path_length) == (True, True, 0)

    cert_path = local.work / "issuing.pem"
    base = "https://pki.example.net/pki"
    args = ["pki", "sign-issuing", "--csr", str(csr_path), *local.root_args()]
    args += ["--days", "400", "--crl-base-url", base, "--out", str(cert_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    issuing = _cert_file(cert_path)
    root = _cert_file(local.pki / "root.pem")
    issuing.verify_directly_issued_by(root)
    assert f"{issuing.serial_number:x}" in out
    assert issuing.subject == csr.subject
    assert issuing.public_key() == csr.public_key()
    lifetime = issuing.not_valid_after_utc - issuing.not_valid_before_utc
    assert lifetime == timedelta(days=400, minutes=5)
    exts = {e.oid: e for e in issuing.extensions}
    assert exts[x509.BasicConstraints.oid].critical is True
    assert exts[x509.BasicConstraints.oid].value == x509.BasicConstraints(ca=True, path_length=0)
    ku = exts[x509.KeyUsage.oid]
    assert ku.critical is True
    assert isinstance(ku.value, x509.KeyUsage)
    assert (ku.value.key_cert_sign, ku.value.crl_sign, ku.value.digital_signature) == (
        True,
        True,
        False,
    )
    assert exts[x509.SubjectKeyIdentifier.oid].value == x509.SubjectKeyIdentifier.from_public_key(
        issuing.public_key()  # type: ignore[arg-type]
    )
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = exts[x509.AuthorityKeyIdentifier.oid].value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == root_ski.digest
    dp = exts[x509.CRLDistributionPoints.oid].value
    assert isinstance(dp, x509.CRLDistributionPoints)
    assert dp[0].full_name == [x509.UniformResourceIdentifier(f"{base}/crl/root.crl")]
    assert pkilint_certificate(issuing.public_bytes(DER)) == []

    ver_path = local.work / "verification.pem"
    assert (
        main(
            [
                "pki",
                "verification-cert",
                "--ca-cert",
                str(cert_path),
                "--code",
                CODE,
                "--out",
                str(ver_path),
            ]
        )
        == 0
    )
    ver = _cert_file(ver_path)
    ver.verify_directly_issued_by(issuing)
    assert ver.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CODE
    assert ver.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=1)
    assert pkilint_certificate(ver.public_bytes(DER)) == []

    # the new issuing certificate works with the configured key for device certificates
    monkeypatch.setenv("CERTROLL_ISSUING_CERT", str(cert_path))
    authority = load_authority(Settings.from_env(), crl_url=None)
    try:
        issuer = Issuer(
            authority, MemoryLedger(), MemoryAuditLog(), IssuancePolicy(), SystemClock()
        )
        leaf = issuer.issue("dev-1", make_csr("dev-1"), request_id="r", trigger="cli", actor="t")
        assert_is_device_leaf(leaf.certificate, "dev-1", authority)
    finally:
        close = getattr(authority.key, "close", None)
        if close is not None:
            close()


def _expect_refused(
    argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], fragment: str
) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rejected: "), err
    assert fragment in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_bad_inputs_exit_2_and_write_nothing(
    local: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    csr_path = local.work / "issuing.csr"
    assert main(["pki", "issuing-csr", "--out", str(csr_path)]) == 0
    out = local.work / "out.pem"
    sign = ["pki", "sign-issuing", *local.root_args(), "--out", str(out)]

    tampered = local.work / "tampered.csr"
    der = bytearray(_csr_file(csr_path).public_bytes(DER))
    der[-5] ^= 0x01
    tampered.write_bytes(bytes(der))
    _expect_refused([*sign, "--csr", str(tampered)], out, capsys, "csr_signature_invalid")

    device = local.work / "device.csr"
    device.write_bytes(make_csr("dev-7"))
    _expect_refused([*sign, "--csr", str(device)], out, capsys, "csr_not_ca")

    other_key = local.work / "other-key.pem"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    mismatch = [
        "pki",
        "sign-issuing",
        "--csr",
        str(csr_path),
        "--root-cert",
        str(local.pki / "root.pem"),
        "--root-key",
        str(other_key),
        "--out",
        str(out),
    ]
    _expect_refused(mismatch, out, capsys, "root_key_mismatch")
    _expect_refused(
        [*sign, "--csr", str(local.work / "missing.csr")], out, capsys, "file_unreadable"
    )
    no_password = [*sign[: sign.index("--root-key-password-file")], "--out", str(out)]
    _expect_refused([*no_password, "--csr", str(csr_path)], out, capsys, "key_password")
    _expect_refused([*sign, "--csr", str(csr_path), "--days", "0"], out, capsys, "days_invalid")

    verify = ["pki", "verification-cert", "--out", str(out)]
    root_pem = str(local.pki / "root.pem")  # the configured key is not the root's
    _expect_refused([*verify, "--ca-cert", root_pem, "--code", CODE], out, capsys, "mismatch")
    issuing_pem = str(local.pki / "issuing.pem")
    _expect_refused(
        [*verify, "--ca-cert", issuing_pem, "--code", "bad code"], out, capsys, "verification_code"
    )
    _expect_refused(
        ["pki", "issuing-csr", "--out", str(out), "--subject", "O=no cn"], out, capsys, "subject"
    )


# --------------------------------------------------------------------------- Key Vault


@pytest.fixture
def vault_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vault, str]]:
    """The Key Vault stand-in, with ``CERTROLL_KEY_BACKEND=keyvault`` pointing at its key."""
    with serve_vault(tmp_path) as (state, kwargs):
        state.keys["issuing"] = ec.generate_private_key(ec.SECP384R1())
        # the CLI opens the key with DefaultAzureCredential; here: a static token and the TLS file
        monkeypatch.setattr(
            keyvault,
            "open_keyvault_key",
            functools.partial(keyvault.open_keyvault_key, credential=StaticCredential(), **kwargs),
        )
        _clean_env(monkeypatch, tmp_path / "home")
        key_id = f"{state.base_url}/keys/issuing/v1"
        monkeypatch.setenv("CERTROLL_KEY_BACKEND", "keyvault")
        monkeypatch.setenv("CERTROLL_KEYVAULT_KEY_ID", key_id)
        yield state, key_id


def test_keyvault_ceremony(
    vault_backend: tuple[Vault, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, key_id = vault_backend
    csr_path = tmp_path / "issuing.csr"
    assert main(["pki", "issuing-csr", "--out", str(csr_path)]) == 0
    assert key_id in capsys.readouterr().out
    csr = _csr_file(csr_path)
    assert csr.is_signature_valid
    assert csr.public_key() == state.keys["issuing"].public_key()
    signs = [r for r in state.requests if r[0] == "POST" and "/keys/issuing/v1/sign" in r[1]]
    assert len(signs) == 1

    # offline root (made here) signs it
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = build_root_certificate(root_key, now=datetime.now(UTC))
    root_pem = write_pem(tmp_path / "root.pem", [root])
    root_key_pem = tmp_path / "root-key.pem"
    root_key_pem.write_bytes(
        root_key.private_bytes(
            PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"offline pass"),
        )
    )
    password = tmp_path / "pass.txt"
    password.write_text("offline pass\n")
    issuing_path = tmp_path / "issuing.pem"
    args = ["pki", "sign-issuing", "--csr", str(csr_path), "--root-cert", str(root_pem)]
    args += ["--root-key", str(root_key_pem), "--root-key-password-file", str(password)]
    assert main([*args, "--out", str(issuing_path)]) == 0
    issuing = _cert_file(issuing_path)
    issuing.verify_directly_issued_by(root)
    assert issuing.public_key() == state.keys["issuing"].public_key()
    assert pkilint_certificate(issuing.public_bytes(DER)) == []

    ver_path = tmp_path / "dps-verification.pem"
    argv = ["pki", "verification-cert", "--ca-cert", str(issuing_path), "--code", CODE]
    assert main([*argv, "--out", str(ver_path)]) == 0
    ver = _cert_file(ver_path)
    ver.verify_directly_issued_by(issuing)
    assert ver.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CODE
    signs = [r for r in state.requests if r[0] == "POST" and "/keys/issuing/v1/sign" in r[1]]
    assert len(signs) == 2  # the CSR and the verification certificate, both in the vault
