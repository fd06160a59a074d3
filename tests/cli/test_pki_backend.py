"""Commands after ``certroll pki init`` use the key backend it set up (README's PKI flow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from cli.main import main
from shared.bootstrap import Services, override_services
from shared.pki.authority import configured_key_backend
from shared.settings import Settings
from tests.support.pki import make_csr
from tests.support.softhsm import SOFTHSM, softhsm_conf


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "CERTROLL_KEY_BACKEND",
        "CERTROLL_FILE_KEY_PASSWORD",
        "CERTROLL_ISSUING_CERT",
        "CERTROLL_PKCS11_PIN",
        "SOFTHSM2_CONF",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("CERTROLL_HOME", str(home))
    monkeypatch.setenv("CERTROLL_STORAGE", "memory")
    return home


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"CERTROLL_HOME": str(home), **env})


@pytest.mark.parametrize(
    ("recorded", "env", "expected"),
    [
        (None, {}, "file"),
        ("pkcs11", {}, "pkcs11"),
        ("file", {}, "file"),
        ("pkcs11", {"CERTROLL_KEY_BACKEND": "keyvault"}, "keyvault"),
        ("pkcs11", {"CERTROLL_KEY_BACKEND": "file"}, "file"),
    ],
)
def test_the_recorded_backend_applies_unless_the_setting_names_one(
    home: Path, recorded: str | None, env: dict[str, str], expected: str
) -> None:
    if recorded is not None:
        (home / "pki").mkdir(parents=True)
        (home / "pki" / "pki.json").write_text(json.dumps({"backend": recorded}))
    assert configured_key_backend(_settings(home, **env)) == expected


def test_an_unreadable_record_means_file(home: Path) -> None:
    (home / "pki").mkdir(parents=True)
    (home / "pki" / "pki.json").write_text("{not json")
    assert configured_key_backend(_settings(home)) == "file"


@pytest.mark.softhsm
@pytest.mark.skipif(not SOFTHSM.exists(), reason="SoftHSM2 is not installed")
def test_readme_pki_flow_issues_with_the_pkcs11_key_pki_init_made(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
    monkeypatch.setenv("CERTROLL_PKCS11_TOKEN", f"c-{tmp_path.name[-20:]}")
    assert main(["pki", "init", "--backend", "pkcs11", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["backend"] == "pkcs11"
    assert made["issuing_key"] is None

    csr = tmp_path / "dev.csr"
    csr.write_bytes(make_csr("dev-001"))
    chain_file = tmp_path / "dev-chain.pem"
    argv = ["issue", "--device-id", "dev-001", "--csr", str(csr), "--out", str(chain_file)]
    with override_services(Services(Settings.from_env())):
        code = main([*argv, "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        serial = json.loads(captured.out)["serialNumber"]
        assert main(["revoke", "--serial", serial, "--reason", "keyCompromise"]) == 0
        assert main(["crl", "--out", str(tmp_path / "issuing.crl")]) == 0
    leaf, issuing = x509.load_pem_x509_certificates(chain_file.read_bytes())
    leaf.verify_directly_issued_by(issuing)
    assert issuing == x509.load_pem_x509_certificate((home / "pki" / "issuing.pem").read_bytes())


@pytest.mark.softhsm
@pytest.mark.skipif(not SOFTHSM.exists(), reason="SoftHSM2 is not installed")
def test_pki_init_never_puts_the_pins_on_a_command_line(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The token's PIN and SO-PIN reach softhsm2-util through its terminal, not argv
    (which every local user can read in the process list)."""
    import subprocess

    pin = "pin-4c1d9e7a0b"
    monkeypatch.setenv("CERTROLL_PKCS11_PIN", pin)
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
    monkeypatch.setenv("CERTROLL_PKCS11_TOKEN", f"p-{tmp_path.name[-20:]}")
    seen: list[list[str]] = []
    real_popen, real_run = subprocess.Popen, subprocess.run

    def popen(cmd: list[str], *args: object, **kwargs: object) -> object:
        seen.append(list(cmd))
        return real_popen(cmd, *args, **kwargs)  # type: ignore[call-overload]

    def run(cmd: list[str], *args: object, **kwargs: object) -> object:
        seen.append(list(cmd))
        return real_run(cmd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(subprocess, "run", run)
    assert main(["pki", "init", "--backend", "pkcs11", "--json"]) == 0
    capsys.readouterr()
    assert any("--init-token" in cmd for cmd in seen)
    for cmd in seen:
        assert pin not in cmd
        assert "--pin" not in cmd
        assert "--so-pin" not in cmd
    # and the token was made with that PIN: the issuing key signs with it
    with override_services(Services(Settings.from_env())):
        csr = tmp_path / "dev.csr"
        csr.write_bytes(make_csr("dev-002"))
        assert main(["issue", "--device-id", "dev-002", "--csr", str(csr)]) == 0
