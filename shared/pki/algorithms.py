"""Which hash and which JOSE algorithm an EC key signs with: decided here, once.

RFC 7518 section 3.4 pairs each NIST curve with one hash: ES256 is ECDSA on P-256 with
SHA-256, ES384 on P-384 with SHA-384, ES512 on P-521 with SHA-512 (RFC 8812 adds ES256K,
secp256k1 with SHA-256). Certificates and CRLs follow the same pairing (RFC 5480 section
4): the hash is as strong as the curve. Key Vault enforces it (an ES384 request for a
P-521 key is refused); PKCS#11 ``CKM_ECDSA`` and file keys would sign any digest, so the
builders ask :func:`signature_hash` and every key backend stays consistent.

RSA keys sign with SHA-256 (PKCS#1 v1.5 unless a caller asks for PSS).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class EcAlgorithm:
    """One curve's signature pairing."""

    curve: str  # cryptography's curve name, e.g. "secp384r1"
    jwk_curve: str  # the JWK ``crv``, e.g. "P-384"
    hash: type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]
    jose: str  # the JWS ``alg``, e.g. "ES384"

    def new_hash(self) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
        return self.hash()


EC_ALGORITHMS: tuple[EcAlgorithm, ...] = (
    EcAlgorithm("secp256r1", "P-256", hashes.SHA256, "ES256"),
    EcAlgorithm("secp384r1", "P-384", hashes.SHA384, "ES384"),
    EcAlgorithm("secp521r1", "P-521", hashes.SHA512, "ES512"),
    EcAlgorithm("secp256k1", "P-256K", hashes.SHA256, "ES256K"),
)
_BY_NAME = {a.curve: a for a in EC_ALGORITHMS} | {a.jwk_curve: a for a in EC_ALGORITHMS}


def ec_algorithm(curve: ec.EllipticCurve | str) -> EcAlgorithm:
    """The pairing for ``curve`` (a curve object, its name, or a JWK ``crv``); ValueError
    for a curve with no JOSE algorithm."""
    name = curve if isinstance(curve, str) else curve.name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"curve {name} has no JOSE signature algorithm (use P-256, P-384 or P-521)"
        ) from None


def signature_hash(key: object) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The hash ``key`` signs certificates and CRLs with: the curve's (P-256 SHA-256,
    P-384 SHA-384, P-521 SHA-512) for an EC key, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return ec_algorithm(key.curve).new_hash()
    return hashes.SHA256()
