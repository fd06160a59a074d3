"""Every EC signing-key class (file, PKCS#11 on SoftHSM2, Key Vault) and the CA ceremony
sign with the curve's own hash: P-256 SHA-256 (ES256), P-384 SHA-384 (ES384), P-521
SHA-512 (ES512)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shared.adapters.filekey import FileSigningKey
from shared.adapters.keyvault import KeyVaultSigningKey
from shared.pki import ceremony
from shared.pki.keys import DigestSigningEcKey
from shared.pki.local_ca import (
    build_empty_crl,
    build_issuing_certificate,
    build_root_certificate,
    generate_pki,
)
from shared.pki.profile import IssuancePolicy, build_device_certificate
from shared.ports import IssuingAuthority
from tests.support.keyvault_standin import StaticCredential, Vault, serve_vault
from tests.support.pki import make_csr
from tests.support.softhsm import KEY_BACKENDS, SOFTHSM, softhsm_conf

CURVES = [
    pytest.param(ec.SECP256R1(), hashes.SHA256, "ES256", id="P-256"),
    pytest.param(ec.SECP384R1(), hashes.SHA384, "ES384", id="P-384"),
    pytest.param(ec.SECP521R1(), hashes.SHA512, "ES512", id="P-521"),
]
KEY_TYPES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}

KeyFactory = Callable[[ec.EllipticCurve], DigestSigningEcKey]


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[tuple[Vault, dict[str, Any]]]:
    with serve_vault(tmp_path) as served:
        yield served


@pytest.fixture(params=[*KEY_BACKENDS, "keyvault"])
def make_key(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyFactory]:
    if request.param == "file":
        yield lambda curve: FileSigningKey(
            tmp_path / "key.pem", None, loaded=ec.generate_private_key(curve)
        )
    elif request.param == "pkcs11":
        from shared.adapters.pkcs11 import Pkcs11SigningKey, create_issuing_key

        monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
        opened: list[Pkcs11SigningKey] = []

        def pkcs11_key(curve: ec.EllipticCurve) -> DigestSigningEcKey:
            key = create_issuing_key(
                module=str(SOFTHSM),
                token_label="algorithms",
                key_label=f"issuing-{curve.name}",
                pin="1234",
                key_type=KEY_TYPES[curve.name],
            )
            assert isinstance(key, Pkcs11SigningKey)
            opened.append(key)
            return key

        yield pkcs11_key
        for key in opened:
            key.close()
    else:
        state, kwargs = request.getfixturevalue("vault")

        def keyvault_key(curve: ec.EllipticCurve) -> DigestSigningEcKey:
            state.keys[curve.name] = ec.generate_private_key(curve)
            return KeyVaultSigningKey(
                f"{state.base_url}/keys/{curve.name}/v1", StaticCredential(), **kwargs
            )

        yield keyvault_key


@pytest.mark.parametrize(("curve", "hash_type", "jose"), CURVES)
def test_certificates_and_crls_use_the_curves_hash(
    make_key: KeyFactory,
    curve: ec.EllipticCurve,
    hash_type: type[hashes.HashAlgorithm],
    jose: str,
) -> None:
    key = make_key(curve)
    assert key.signature_algorithm.jose == jose
    pki = generate_pki()
    now = datetime.now(UTC)
    issuing = build_issuing_certificate(
        pki.root_key, pki.root_certificate, key.public_key(), now=now
    )
    authority = IssuingAuthority(issuing, key, "test", (issuing,), pki.root_certificate)
    leaf = build_device_certificate(
        x509.load_pem_x509_csr(make_csr("dev-alg")), "dev-alg", authority, IssuancePolicy(), now
    )
    assert isinstance(leaf.signature_hash_algorithm, hash_type)
    leaf.verify_directly_issued_by(issuing)
    crl = build_empty_crl(key, issuing, now=now)
    assert isinstance(crl.signature_hash_algorithm, hash_type)
    assert crl.is_signature_valid(key.public_key())
    csr = ceremony.build_issuing_csr(key, ceremony.parse_subject("CN=alg,O=certroll"))
    assert isinstance(csr.signature_hash_algorithm, hash_type)


def test_key_vault_is_asked_for_es512_with_a_p521_key(vault: tuple[Vault, dict[str, Any]]) -> None:
    state, kwargs = vault
    state.keys["p521"] = ec.generate_private_key(ec.SECP521R1())
    key = KeyVaultSigningKey(f"{state.base_url}/keys/p521/v1", StaticCredential(), **kwargs)
    signature = key.sign(b"payload", ec.ECDSA(hashes.SHA512()))
    key.public_key().verify(signature, b"payload", ec.ECDSA(hashes.SHA512()))
    assert [r for r in state.requests if r[0] == "POST"]
    with pytest.raises(ValueError, match=r"P-521 keys with ES512 \(sha512\), not sha384"):
        key.sign(b"payload", ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize(("curve", "hash_type", "jose"), CURVES)
def test_the_ceremony_signs_with_the_root_curves_hash(
    curve: ec.EllipticCurve, hash_type: type[hashes.HashAlgorithm], jose: str
) -> None:
    now = datetime.now(UTC)
    root_key = ec.generate_private_key(curve)
    root = build_root_certificate(root_key, now=now)
    assert isinstance(root.signature_hash_algorithm, hash_type)
    issuing_key = ec.generate_private_key(ec.SECP384R1())
    subject = ceremony.parse_subject(ceremony.DEFAULT_ISSUING_SUBJECT)
    csr = ceremony.build_issuing_csr(issuing_key, subject)
    issued = ceremony.sign_issuing_csr(csr, root, root_key, now=now)
    assert isinstance(issued.signature_hash_algorithm, hash_type)
    issued.verify_directly_issued_by(root)
