from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cli.main import commands, main
from shared.bootstrap import Services, override_services
from shared.domain.model import CertificateStatus
from shared.settings import Settings
from tests.support.pki import make_csr


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CERTROLL_FILE_KEY_PASSWORD", "CERTROLL_ISSUING_CERT", "SOFTHSM2_CONF"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CERTROLL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CERTROLL_STORAGE", "memory")
    monkeypatch.setenv("CERTROLL_KEY_BACKEND", "file")
    return tmp_path / "home"


@pytest.fixture
def services(home: Path) -> Iterator[Services]:
    assert main(["pki", "init"]) == 0
    with override_services(Services(Settings.from_env())) as svc:
        yield svc


def test_commands_are_registered() -> None:
    assert main(["--help"]) == 0
    assert {"pki", "issue", "revoke", "crl"} <= set(commands())


def test_pki_init_json_and_refuses_overwrite(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "init", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    root = Path(out["root_certificate"])
    issuing = Path(out["issuing_certificate"])
    assert root == home / "pki" / "root.pem"
    assert issuing == home / "pki" / "issuing.pem"
    before = issuing.read_bytes()
    x509.load_pem_x509_certificate(before).verify_directly_issued_by(
        x509.load_pem_x509_certificate(root.read_bytes())
    )
    assert main(["pki", "init"]) == 4
    assert "--force" in capsys.readouterr().err
    assert issuing.read_bytes() == before
    assert main(["pki", "init", "--force"]) == 0
    assert issuing.read_bytes() != before


def test_issue_reject_revoke_crl(
    services: Services, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csr_file = tmp_path / "dev.csr"
    csr_file.write_bytes(make_csr("dev-1"))
    chain_file = tmp_path / "chain.pem"
    code = main(
        [
            "issue",
            "--device-id",
            "dev-1",
            "--csr",
            str(csr_file),
            "--out",
            str(chain_file),
            "--json",
        ]
    )
    assert code == 0
    facts = json.loads(capsys.readouterr().out)
    chain = x509.load_pem_x509_certificates(chain_file.read_bytes())
    root = x509.load_pem_x509_certificate((home / "pki" / "root.pem").read_bytes())
    assert len(chain) == 2
    chain[0].verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(root)
    assert facts["deviceId"] == "dev-1"
    assert facts["serialNumber"] == format(chain[0].serial_number, "x")
    assert facts["notAfter"] == chain[0].not_valid_after_utc.isoformat()
    record = services.ledger.get(facts["serialNumber"])
    assert record.thumbprint_sha256 == facts["thumbprintSha256"]
    assert record.trigger == "cli"

    # without --out the chain goes to stdout
    assert main(["issue", "--device-id", "dev-1", "--csr", str(csr_file)]) == 0
    assert x509.load_pem_x509_certificates(capsys.readouterr().out.encode())[0] == chain[0]

    # rejected: exit 2, message on stderr, no file, audit entry
    bad = tmp_path / "bad.csr"
    bad.write_bytes(make_csr("someone-else"))
    rejected_out = tmp_path / "rejected.pem"
    code = main(["issue", "--device-id", "dev-2", "--csr", str(bad), "--out", str(rejected_out)])
    assert code == 2
    assert capsys.readouterr().err.startswith("rejected: subject_mismatch: ")
    assert not rejected_out.exists()
    assert services.audit.list("dev-2")[0].action == "issue_rejected"
    assert services.ledger.list_for_device("dev-2") == []

    # unreadable CSR file
    assert main(["issue", "--device-id", "dev-2", "--csr", str(tmp_path / "nope")]) == 2

    # revoke
    serial = facts["serialNumber"]
    assert main(["revoke", "--serial", serial, "--reason", "keyCompromise"]) == 0
    assert services.ledger.get(serial).status is CertificateStatus.REVOKED
    assert main(["revoke", "--serial", "abcdef"]) == 3
    assert main(["revoke", "--serial", serial, "--reason", "stolen"]) == 2
    assert main(["revoke", "--serial", "xyz"]) == 2
    capsys.readouterr()

    # crl
    crl_file = tmp_path / "crl.pem"
    assert main(["crl", "--out", str(crl_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["url"] == services.crl_publisher.url_for("crl/issuing.crl")
    assert result["revoked"] == 1
    crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    assert [format(e.serial_number, "x") for e in crl] == [serial]
    assert services.crl_publisher.fetch("crl/root.crl")


def test_leaf_crl_url_matches_publisher(services: Services, tmp_path: Path) -> None:
    csr_file = tmp_path / "dev.csr"
    csr_file.write_bytes(make_csr("dev-5"))
    out = tmp_path / "c.pem"
    assert main(["issue", "--device-id", "dev-5", "--csr", str(csr_file), "--out", str(out)]) == 0
    leaf = x509.load_pem_x509_certificates(out.read_bytes())[0]
    dp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name == [
        x509.UniformResourceIdentifier(services.crl_publisher.url_for("crl/issuing.crl"))
    ]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
