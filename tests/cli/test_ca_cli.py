"""``certroll ca`` and ``certroll pki revoke-issuing`` on a local PKI with memory storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cli.main import main
from shared.bootstrap import Services, override_services
from shared.settings import Settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CERTROLL_FILE_KEY_PASSWORD", "CERTROLL_ISSUING_CERT", "SOFTHSM2_CONF"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CERTROLL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CERTROLL_STORAGE", "memory")
    monkeypatch.setenv("CERTROLL_KEY_BACKEND", "file")
    monkeypatch.setenv("CERTROLL_FILE_KEY_PASSWORD", "test-password")
    return tmp_path / "home"


@pytest.fixture
def services(home: Path) -> Iterator[Services]:
    assert main(["pki", "init"]) == 0
    with override_services(Services(Settings.from_env())) as svc:
        yield svc


def test_steps_in_order_and_a_step_out_of_order_exits_4(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "roll", "trust"]) == 4
    assert "ca_roll_out_of_order" in capsys.readouterr().err
    csr = tmp_path / "new.csr"
    assert main(["ca", "roll", "prepare", "--csr-out", str(csr), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["roll"]["state"] == "prepared"
    assert out["roll"]["next_step"] == "install"
    assert x509.load_pem_x509_csr(csr.read_bytes()).is_signature_valid
    assert main(["ca", "roll", "install", "--json"]) == 0  # the local root signs
    assert json.loads(capsys.readouterr().out)["roll"]["state"] == "certified"
    # no access to DPS / hub certificates here: verify says how to run it
    assert main(["ca", "roll", "verify"]) == 2
    assert "ca_verify_unavailable" in capsys.readouterr().err
    assert main(["ca", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["roll"]["new_ca_id"] == "issuing-2"


def test_revoke_issuing_signs_a_root_crl_listing_the_ca(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "init"]) == 0
    pki = home / "pki"
    password = tmp_path / "pass"
    password.write_text("test-password\n")
    out = tmp_path / "root-new.crl"
    code = main(
        [
            "pki", "revoke-issuing",
            "--issuing-cert", str(pki / "issuing.pem"),
            "--root-cert", str(pki / "root.pem"),
            "--root-key", str(pki / "root-key.pem"),
            "--root-key-password-file", str(password),
            "--root-crl", str(pki / "root.crl"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    crl = x509.load_der_x509_crl(out.read_bytes())
    root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    issuing = x509.load_pem_x509_certificate((pki / "issuing.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(issuing.serial_number)
    assert entry is not None
