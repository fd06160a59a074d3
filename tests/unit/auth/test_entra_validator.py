"""EntraTokenValidator's key handling and configuration, against a loopback token issuer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from local.token_issuer import LocalTokenIssuer
from shared.adapters.entra import (
    MIN_REFRESH_SECONDS,
    EntraConfig,
    EntraTokenValidator,
    check_url,
)
from shared.domain.auth import (
    AuthUnavailableError,
    ForbiddenError,
    NotAuthenticatedError,
    OperatorAuthenticator,
    bearer_token,
)
from shared.settings import Settings


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[LocalTokenIssuer]:
    found = LocalTokenIssuer(tmp_path)
    found.serve()
    yield found
    found.close()


def validator_for(issuer: LocalTokenIssuer, ticks: Ticks | None = None) -> EntraTokenValidator:
    config = EntraConfig.from_settings(Settings.from_env(issuer.settings_values()))
    return EntraTokenValidator(config, monotonic=ticks or Ticks())


def jwks_hits(issuer: LocalTokenIssuer) -> int:
    return sum(n for path, n in issuer.hits.items() if path.endswith("/keys"))


def test_keys_and_metadata_are_fetched_once_and_cached(issuer: LocalTokenIssuer) -> None:
    validator = validator_for(issuer)
    for _ in range(5):
        assert validator.validate(issuer.mint()).object_id
    assert jwks_hits(issuer) == 1
    assert sum(n for p, n in issuer.hits.items() if p.endswith("openid-configuration")) == 1


def test_unknown_kid_refetches_once_and_at_most_once_a_minute(issuer: LocalTokenIssuer) -> None:
    ticks = Ticks()
    validator = validator_for(issuer, ticks)
    validator.validate(issuer.mint())
    for n in range(20):
        with pytest.raises(NotAuthenticatedError) as info:
            validator.validate(issuer.mint(headers={"kid": f"unknown-{n}"}))
        assert info.value.code == "token_key_unknown"
    assert jwks_hits(issuer) == 2  # the first fetch and one refresh, not 21
    ticks.now += MIN_REFRESH_SECONDS + 1
    with pytest.raises(NotAuthenticatedError):
        validator.validate(issuer.mint(headers={"kid": "unknown-later"}))
    assert jwks_hits(issuer) == 3


def test_a_new_signing_key_is_picked_up_on_its_first_token(issuer: LocalTokenIssuer) -> None:
    validator = validator_for(issuer)
    validator.validate(issuer.mint())
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = issuer.publish(new_key.public_key())
    caller = validator.validate(issuer.mint(key=new_key, headers={"kid": kid}))
    assert caller.tenant_id == issuer.tenant_id
    assert jwks_hits(issuer) == 2


def test_metadata_of_another_tenant_is_refused(issuer: LocalTokenIssuer, tmp_path: Path) -> None:
    other = LocalTokenIssuer(tmp_path / "other")
    other.serve()
    try:
        values = {**issuer.settings_values(), "CERTROLL_AUTH_METADATA_URL": other.metadata_url}
        validator = EntraTokenValidator(EntraConfig.from_settings(Settings.from_env(values)))
        with pytest.raises(AuthUnavailableError) as info:
            validator.validate(issuer.mint())
        assert info.value.code == "auth_misconfigured"
    finally:
        other.close()


def test_unreachable_metadata_is_retried_only_after_a_pause(issuer: LocalTokenIssuer) -> None:
    ticks = Ticks()
    values = {
        **issuer.settings_values(),
        "CERTROLL_AUTH_METADATA_URL": "http://127.0.0.1:9/x/.well-known/openid-configuration",
    }
    validator = EntraTokenValidator(
        EntraConfig.from_settings(Settings.from_env(values)), monotonic=ticks, timeout=2
    )
    for _ in range(3):
        with pytest.raises(AuthUnavailableError) as info:
            validator.validate(issuer.mint())
        assert info.value.code == "keys_unavailable"


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"CERTROLL_AUTH_TENANT_ID": "not-a-guid", "CERTROLL_AUTH_AUDIENCES": "api://x"},
        {"CERTROLL_AUTH_TENANT_ID": "11111111-2222-3333-4444-555555555555"},
    ],
)
def test_missing_configuration_is_reported(values: dict[str, str]) -> None:
    with pytest.raises(AuthUnavailableError) as info:
        EntraConfig.from_settings(Settings.from_env(values))
    assert info.value.code == "auth_not_configured"


def test_default_metadata_is_the_tenants_entra_id_configuration() -> None:
    tenant = "11111111-2222-3333-4444-555555555555"
    config = EntraConfig.from_settings(
        Settings.from_env(
            {"CERTROLL_AUTH_TENANT_ID": tenant, "CERTROLL_AUTH_AUDIENCES": "api://a, a ,"}
        )
    )
    assert config.metadata_url == (
        f"https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
    )
    assert config.audiences == ("api://a", "a")
    assert config.issuers == (
        f"https://sts.windows.net/{tenant}/",
        f"https://login.microsoftonline.com/{tenant}/v2.0",
    )


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration", True),
        ("http://127.0.0.1:8080/t/keys", True),
        ("http://localhost/t/keys", True),
        ("http://login.microsoftonline.com/t/keys", False),
        ("file:///etc/passwd", False),
    ],
)
def test_only_https_or_loopback_urls_are_used(url: str, ok: bool) -> None:
    if ok:
        assert check_url(url) == url
    else:
        with pytest.raises(AuthUnavailableError):
            check_url(url)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "token_missing"),
        ("  ", "token_missing"),
        ("Basic abc", "token_malformed"),
        ("Bearer abc", "token_malformed"),
        ("Bearer a.b.c d", "token_malformed"),
        ("Bearer " + "a" * 20_000 + ".b.c", "token_too_large"),
    ],
)
def test_bearer_header_shapes(header: str | None, code: str) -> None:
    with pytest.raises(NotAuthenticatedError) as info:
        bearer_token(header)
    assert info.value.code == code


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer a.b.c") == "a.b.c"


def test_authenticator_role_check_is_case_sensitive(issuer: LocalTokenIssuer) -> None:
    auth = OperatorAuthenticator(validator_for(issuer), "Certroll.Operator")
    caller = auth.authenticate("Bearer " + issuer.mint(roles=("certroll.operator",)), None)
    with pytest.raises(ForbiddenError):
        auth.authorize(caller)


def test_principal_header_is_ignored_unless_the_platform_enforces_auth(
    issuer: LocalTokenIssuer,
) -> None:
    auth = OperatorAuthenticator(validator_for(issuer), "Certroll.Operator")
    caller = auth.authenticate("Bearer " + issuer.mint(), "%%% not even base64 %%%")
    auth.authorize(caller)
    enforced = OperatorAuthenticator(
        validator_for(issuer), "Certroll.Operator", platform_auth_enforced=True
    )
    with pytest.raises(NotAuthenticatedError) as info:
        enforced.authenticate("Bearer " + issuer.mint(), "%%% not even base64 %%%")
    assert info.value.code == "principal_invalid"


def test_last_keys_stay_in_use_when_the_key_endpoint_goes_away(issuer: LocalTokenIssuer) -> None:
    validator = validator_for(issuer)
    validator.validate(issuer.mint())
    issuer.close()  # the key endpoint is gone; the cached key set then expires
    client = validator._client()
    assert client.jwk_set_cache is not None
    client.jwk_set_cache.lifespan = 0.0
    assert validator.validate(issuer.mint()).object_id
    with pytest.raises(NotAuthenticatedError) as info:  # unknown to the last keys too
        validator.validate(issuer.mint(headers={"kid": "rolled-over"}))
    assert info.value.code == "token_key_unknown"
