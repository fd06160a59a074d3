"""``certroll token`` mints tokens the loopback issuer's validator accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from local.token_issuer import LocalTokenIssuer
from shared.adapters.entra import EntraConfig, EntraTokenValidator
from shared.settings import Settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CERTROLL_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def validator(home: Path) -> Iterator[EntraTokenValidator]:
    issuer = LocalTokenIssuer(home)  # the key `certroll serve` would use
    issuer.serve()
    yield EntraTokenValidator(EntraConfig.from_settings(Settings(issuer.settings_values())))
    issuer.close()


def minted(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", *args]) == 0
    return capsys.readouterr().out.strip()


def test_default_token_is_a_delegated_operator_token(
    validator: EntraTokenValidator, capsys: pytest.CaptureFixture[str]
) -> None:
    caller = validator.validate(minted(capsys, "--name", "ops@example.com"))
    assert caller.roles == {"Certroll.Operator"}
    assert not caller.is_app
    assert caller.display_name == "ops@example.com"
    assert caller.token_version == "2.0"


def test_app_v1_and_role_options(
    validator: EntraTokenValidator, capsys: pytest.CaptureFixture[str]
) -> None:
    caller = validator.validate(minted(capsys, "--app", "--v1", "--role", "A", "--role", "B"))
    assert caller.is_app
    assert caller.token_version == "1.0"
    assert caller.roles == {"A", "B"}
    assert validator.validate(minted(capsys, "--no-role")).roles == frozenset()


def test_key_is_kept_private(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    minted(capsys)
    key = home / "token-issuer" / "key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_lifetime_is_bounded(home: Path) -> None:
    assert main(["token", "--minutes", "0"]) == 2
