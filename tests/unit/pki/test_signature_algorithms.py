"""One curve -> (hash, JOSE algorithm) pairing (RFC 7518 section 3.4) for every signer."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shared.pki.algorithms import ec_algorithm, signature_hash

PAIRS = [
    (ec.SECP256R1(), "P-256", hashes.SHA256, "ES256"),
    (ec.SECP384R1(), "P-384", hashes.SHA384, "ES384"),
    (ec.SECP521R1(), "P-521", hashes.SHA512, "ES512"),
    (ec.SECP256K1(), "P-256K", hashes.SHA256, "ES256K"),
]


@pytest.mark.parametrize(("curve", "crv", "hash_type", "jose"), PAIRS)
def test_each_curve_has_one_hash_and_jose_algorithm(
    curve: ec.EllipticCurve, crv: str, hash_type: type[hashes.HashAlgorithm], jose: str
) -> None:
    for name in (curve, curve.name, crv):
        pairing = ec_algorithm(name)
        assert (pairing.curve, pairing.jwk_curve, pairing.hash, pairing.jose) == (
            curve.name,
            crv,
            hash_type,
            jose,
        )
    key = ec.generate_private_key(curve)
    assert isinstance(signature_hash(key), hash_type)
    assert isinstance(signature_hash(key.public_key()), hash_type)


@pytest.mark.parametrize("curve", [ec.SECP224R1(), ec.BrainpoolP384R1(), "P-999"])
def test_a_curve_without_a_jose_algorithm_is_refused(curve: ec.EllipticCurve | str) -> None:
    with pytest.raises(ValueError, match="no JOSE signature algorithm"):
        ec_algorithm(curve)


def test_rsa_and_other_keys_sign_with_sha256() -> None:
    assert isinstance(signature_hash(rsa.generate_private_key(65537, 2048)), hashes.SHA256)
    assert isinstance(signature_hash(ed25519.Ed25519PrivateKey.generate()), hashes.SHA256)
