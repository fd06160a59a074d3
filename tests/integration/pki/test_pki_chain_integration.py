"""The issuing CA end to end with each key backend: pkilint, openssl verify, CRL checks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.adapters.memory import MemoryAuditLog, MemoryCrlPublisher, MemoryLedger
from shared.clock import SystemClock
from shared.pki.authority import load_authority
from shared.pki.issuer import Issuer
from shared.pki.local_ca import init_pki
from shared.pki.profile import IssuancePolicy
from shared.ports import IssuingAuthority
from shared.settings import Settings
from tests.support.pki import (
    assert_is_device_leaf,
    make_csr,
    make_device_key,
    pkilint_certificate,
    pkilint_crl,
    write_pem,
)
from tests.support.softhsm import KEY_BACKENDS, SOFTHSM, softhsm_conf

OPENSSL = shutil.which("openssl")
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@dataclass
class Ca:
    home: Path
    authority: IssuingAuthority
    issuer: Issuer
    publisher: MemoryCrlPublisher
    root: x509.Certificate


@pytest.fixture(params=KEY_BACKENDS)
def ca(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Ca]:
    backend: str = request.param
    home = tmp_path / "home"
    env = {"CERTROLL_HOME": str(home), "CERTROLL_KEY_BACKEND": backend}
    if backend == "pkcs11":
        monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
        env["CERTROLL_PKCS11_TOKEN"] = f"t-{tmp_path.name[-20:]}"
    settings = Settings.from_env(env)
    publisher = MemoryCrlPublisher()
    init_pki(home, backend, False, publisher.base_url, settings=settings)
    authority = load_authority(settings, crl_url=publisher.url_for("crl/issuing.crl"))
    issuer = Issuer(
        authority,
        MemoryLedger(),
        MemoryAuditLog(),
        IssuancePolicy(validity_days=30),
        SystemClock(),
        crl_publisher=publisher,
    )
    assert authority.root is not None
    yield Ca(home, authority, issuer, publisher, authority.root)
    close = getattr(authority.key, "close", None)
    if close is not None:
        close()


def _openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "verify", *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_key_backend_matches_certificate(ca: Ca) -> None:
    key = ca.authority.key
    assert key.public_key() == ca.authority.certificate.public_key()
    with pytest.raises(NotImplementedError, match="never leaves"):
        key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert ca.authority.key_id.startswith(("file:", "pkcs11:"))


def test_pkilint_root_issuing_leaf_and_crl(ca: Ca) -> None:
    issued = ca.issuer.issue("dev-1", make_csr("dev-1"), request_id="r", trigger="cli", actor="t")
    assert_is_device_leaf(issued.certificate, "dev-1", ca.authority)
    ca.issuer.revoke(issued.record.serial, "keyCompromise", "t")
    for cert in (ca.root, ca.authority.certificate, issued.certificate):
        assert pkilint_certificate(cert.public_bytes(DER)) == [], cert.subject
    assert pkilint_crl(ca.issuer.build_crl()) == []
    assert pkilint_crl((ca.home / "pki" / "root.crl").read_bytes()) == []


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@pytest.mark.parametrize("device_key", ["ec-p256", "rsa-2048"])
def test_openssl_verify_and_crl_check(ca: Ca, tmp_path: Path, device_key: str) -> None:
    good = ca.issuer.issue(
        "dev-good",
        make_csr("dev-good", make_device_key(device_key)),
        request_id="r1",
        trigger="cli",
        actor="t",
    )
    bad = ca.issuer.issue("dev-bad", make_csr("dev-bad"), request_id="r2", trigger="cli", actor="t")
    root = write_pem(tmp_path / "root.pem", [ca.root])
    issuing = write_pem(tmp_path / "issuing.pem", [ca.authority.certificate])
    good_pem = write_pem(tmp_path / "good.pem", [good.certificate])
    bad_pem = write_pem(tmp_path / "bad.pem", [bad.certificate])

    for leaf in (good_pem, bad_pem):
        done = _openssl_verify("-CAfile", str(root), "-untrusted", str(issuing), str(leaf))
        assert done.returncode == 0, done.stdout + done.stderr

    ca.issuer.revoke(bad.record.serial, "keyCompromise", "t")
    ca.issuer.publish_crl()
    crl = x509.load_der_x509_crl(ca.publisher.fetch("crl/issuing.crl"))
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(PEM))

    common = ["-crl_check", "-CRLfile", str(crl_pem), "-CAfile", str(root), "-untrusted"]
    ok = _openssl_verify(*common, str(issuing), str(good_pem))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    revoked = _openssl_verify(*common, str(issuing), str(bad_pem))
    assert revoked.returncode != 0
    assert "certificate revoked" in (revoked.stdout + revoked.stderr)


@pytest.mark.softhsm
@pytest.mark.skipif(not SOFTHSM.exists(), reason="SoftHSM2 is not installed")
def test_softhsm_key_is_sensitive_and_not_extractable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
    home = tmp_path / "home"
    settings = Settings.from_env({"CERTROLL_HOME": str(home), "CERTROLL_PKCS11_TOKEN": "attr"})
    init_pki(home, "pkcs11", False, "", settings=settings)
    assert not (home / "pki" / "issuing-key.pem").exists()
    pin = (home / "pki" / "pkcs11-pin").read_text().strip()
    from shared.adapters.pkcs11 import _library

    token = _library(str(SOFTHSM)).get_token(token_label="attr")
    try:
        session = token.open(user_pin=pin)
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        session = token.open()
    with session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="certroll-issuing")
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.TOKEN] is True
