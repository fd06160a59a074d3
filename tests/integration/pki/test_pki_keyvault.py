"""KeyVaultSigningKey against a loopback stand-in that answers like Key Vault's REST API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shared.adapters.keyvault import (
    KeyVaultRsaSigningKey,
    KeyVaultSigningKey,
    open_keyvault_key,
    parse_key_id,
)
from shared.domain.errors import InvalidRequestError, SigningError, ThrottledError
from shared.pki.local_ca import build_issuing_certificate, generate_pki
from shared.pki.profile import IssuancePolicy, build_device_certificate
from shared.ports import IssuingAuthority
from tests.support.keyvault_standin import StaticCredential, Vault, serve_vault
from tests.support.pki import assert_is_device_leaf, make_csr, pkilint_certificate


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[tuple[Vault, dict[str, Any]]]:
    with serve_vault(tmp_path) as served:
        yield served


def test_ec_key_signs_certificates(vault: tuple[Vault, dict[str, Any]]) -> None:
    state, kwargs = vault
    state.keys["issuing"] = ec.generate_private_key(ec.SECP384R1())
    credential = StaticCredential()
    key = open_keyvault_key(f"{state.base_url}/keys/issuing/v1", credential, **kwargs)
    assert isinstance(key, KeyVaultSigningKey)
    assert key.public_key() == state.keys["issuing"].public_key()
    assert key.key_id == f"{state.base_url}/keys/issuing/v1"
    assert credential.scopes
    assert credential.scopes[0] == ("https://vault.azure.net/.default",)

    pki = generate_pki()
    now = datetime.now(UTC)
    issuing = build_issuing_certificate(
        pki.root_key, pki.root_certificate, key.public_key(), now=now
    )
    authority = IssuingAuthority(issuing, key, key.key_id, (issuing,), pki.root_certificate)
    cert = build_device_certificate(
        x509.load_pem_x509_csr(make_csr("dev-kv")), "dev-kv", authority, IssuancePolicy(), now
    )
    assert_is_device_leaf(cert, "dev-kv", authority)
    assert pkilint_certificate(cert.public_bytes(serialization.Encoding.DER)) == []
    signs = [
        r for r in state.requests if r[0] == "POST" and r[1].startswith("/keys/issuing/v1/sign")
    ]
    assert len(signs) >= 1
    with pytest.raises(NotImplementedError, match="never leaves"):
        key.private_numbers()


@pytest.mark.parametrize("use_pss", [False, True])
def test_rsa_key(vault: tuple[Vault, dict[str, Any]], use_pss: bool) -> None:
    state, kwargs = vault
    state.keys["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = open_keyvault_key(f"{state.base_url}/keys/rsa/v1", StaticCredential(), **kwargs)
    assert isinstance(key, KeyVaultRsaSigningKey)
    pad: padding.AsymmetricPadding = (
        padding.PSS(padding.MGF1(hashes.SHA256()), 32) if use_pss else padding.PKCS1v15()
    )
    sig = key.sign(b"hello", pad, hashes.SHA256())
    key.public_key().verify(sig, b"hello", pad, hashes.SHA256())


def test_429_with_retry_after_is_honoured(vault: tuple[Vault, dict[str, Any]]) -> None:
    state, kwargs = vault
    state.keys["issuing"] = ec.generate_private_key(ec.SECP256R1())
    key = KeyVaultSigningKey(f"{state.base_url}/keys/issuing/v1", StaticCredential(), **kwargs)
    state.throttle_signs = 1
    start = time.monotonic()
    der = key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    elapsed = time.monotonic() - start
    key.public_key().verify(der, b"payload", ec.ECDSA(hashes.SHA256()))
    sign_times = [t for m, p, t in state.requests if m == "POST" and "/sign" in p]
    assert len(sign_times) >= 2
    assert sign_times[-1] - sign_times[-2] >= 0.95  # waited for Retry-After: 1
    assert elapsed >= 0.95


def test_persistent_429_becomes_throttled_error(vault: tuple[Vault, dict[str, Any]]) -> None:
    state, kwargs = vault
    state.keys["issuing"] = ec.generate_private_key(ec.SECP256R1())
    key = KeyVaultSigningKey(
        f"{state.base_url}/keys/issuing/v1", StaticCredential(), retry_total=0, **kwargs
    )
    state.throttle_signs = 5
    with pytest.raises(ThrottledError) as info:
        key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    assert info.value.retry_after == 1.0


def test_unknown_key_is_signing_error(vault: tuple[Vault, dict[str, Any]]) -> None:
    state, kwargs = vault
    with pytest.raises(SigningError, match="404"):
        KeyVaultSigningKey(f"{state.base_url}/keys/missing/v1", StaticCredential(), **kwargs)


@pytest.mark.parametrize(
    ("key_id", "expected"),
    [
        (
            "https://myvault.vault.azure.net/keys/issuing/0123abcd",
            ("https://myvault.vault.azure.net", "issuing", "0123abcd"),
        ),
        (
            "https://myhsm.managedhsm.azure.net/keys/ca-key/9f8e",
            ("https://myhsm.managedhsm.azure.net", "ca-key", "9f8e"),
        ),
        (
            "https://myvault.vault.azure.net/keys/issuing",
            ("https://myvault.vault.azure.net", "issuing", None),
        ),
    ],
)
def test_parse_key_id(key_id: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_key_id(key_id) == expected


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        "myvault/keys/x",
        "http://myvault.vault.azure.net/keys/issuing/1",
        "https://myvault.vault.azure.net/secrets/issuing/1",
        "https://myvault.vault.azure.net/keys/",
    ],
)
def test_bad_key_id(key_id: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_key_id(key_id)
