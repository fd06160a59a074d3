"""Base classes for signing keys whose private half lives somewhere else.

A signing key is a ``cryptography`` private-key subclass, so ``CertificateBuilder.sign()``
and ``CertificateRevocationListBuilder.sign()`` work unchanged: the builder hands the
to-be-signed bytes to :meth:`sign`, which hashes them locally and asks the backend
(HSM, Key Vault, a development file) to sign the digest. Every operation that would need
the private key itself (export, key agreement, decryption) raises ``NotImplementedError``.

Backends implement :meth:`_sign_digest` (EC: return a DER ``ECDSA-Sig-Value``; RSA:
return the raw signature) and :meth:`public_key`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as _serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

from shared.pki.algorithms import EcAlgorithm, ec_algorithm

#: Hash algorithms a backend may be asked to sign with (SHA-1 and MD5 never).
SIGNING_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA256,
    hashes.SHA384,
    hashes.SHA512,
)


def digest_for(
    data: bytes, algorithm: hashes.HashAlgorithm | asym_utils.Prehashed
) -> tuple[bytes, hashes.HashAlgorithm]:
    """``(digest, hash algorithm)`` of ``data``; ``data`` is the digest already when prehashed."""
    if isinstance(algorithm, asym_utils.Prehashed):
        inner: hashes.HashAlgorithm = algorithm._algorithm
        if len(data) != inner.digest_size:
            raise ValueError("prehashed data does not match the digest size")
        chosen, digest = inner, bytes(data)
    else:
        hasher = hashes.Hash(algorithm)
        hasher.update(data)
        chosen, digest = algorithm, hasher.finalize()
    if not isinstance(chosen, SIGNING_HASHES):
        raise ValueError(f"hash algorithm {chosen.name} is not allowed for signing")
    return digest, chosen


def _unsupported(what: str, backend: str) -> NoReturn:
    raise NotImplementedError(
        f"{what} is not possible with a {backend} key: the private key never leaves the "
        "key store; only sign() and public_key() are available"
    )


class DigestSigningEcKey(ec.EllipticCurvePrivateKey, metaclass=abc.ABCMeta):
    """An EC private key that signs digests through a backend."""

    backend_name = "remote"

    @abc.abstractmethod
    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        """Sign ``digest`` (made with ``algorithm``); return a DER ECDSA signature."""

    @abc.abstractmethod
    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    @property
    def curve(self) -> ec.EllipticCurve:
        return self.public_key().curve

    @property
    def key_size(self) -> int:
        return self.public_key().curve.key_size

    @property
    def signature_algorithm(self) -> EcAlgorithm:
        """The curve's hash and JOSE algorithm (P-256 ES256, P-384 ES384, P-521 ES512)."""
        return ec_algorithm(self.curve)

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError("only ECDSA signatures are supported")
        digest, algorithm = digest_for(bytes(data), signature_algorithm.algorithm)
        return self._sign_digest(digest, algorithm)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _unsupported("ECDH key exchange", self.backend_name)

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _unsupported("Reading the private numbers", self.backend_name)

    def private_bytes(
        self,
        encoding: _serialization.Encoding,
        format: _serialization.PrivateFormat,
        encryption_algorithm: _serialization.KeySerializationEncryption,
    ) -> bytes:
        _unsupported("Exporting the private key", self.backend_name)

    def __copy__(self) -> DigestSigningEcKey:
        return self

    def __deepcopy__(self, memo: dict[Any, Any]) -> DigestSigningEcKey:
        return self


class DigestSigningRsaKey(rsa.RSAPrivateKey, metaclass=abc.ABCMeta):
    """An RSA private key that signs digests through a backend (PKCS#1 v1.5 or PSS)."""

    backend_name = "remote"

    @abc.abstractmethod
    def _sign_digest(
        self, digest: bytes, algorithm: hashes.HashAlgorithm, pad: AsymmetricPadding
    ) -> bytes:
        """Sign ``digest`` with ``pad`` (``PKCS1v15`` or ``PSS``); return the raw signature."""

    @abc.abstractmethod
    def public_key(self) -> rsa.RSAPublicKey: ...

    @property
    def key_size(self) -> int:
        return self.public_key().key_size

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: asym_utils.Prehashed | hashes.HashAlgorithm | asym_utils.NoDigestInfo,
    ) -> bytes:
        if isinstance(algorithm, asym_utils.NoDigestInfo):
            raise TypeError("signing without a DigestInfo is not supported")
        if not isinstance(padding, _PADDINGS):
            raise TypeError("only PKCS1v15 and PSS padding are supported")
        digest, chosen = digest_for(bytes(data), algorithm)
        return self._sign_digest(digest, chosen, padding)

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        _unsupported("Decryption", self.backend_name)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _unsupported("Reading the private numbers", self.backend_name)

    def private_bytes(
        self,
        encoding: _serialization.Encoding,
        format: _serialization.PrivateFormat,
        encryption_algorithm: _serialization.KeySerializationEncryption,
    ) -> bytes:
        _unsupported("Exporting the private key", self.backend_name)

    def __copy__(self) -> DigestSigningRsaKey:
        return self

    def __deepcopy__(self, memo: dict[Any, Any]) -> DigestSigningRsaKey:
        return self


_PADDINGS = (padding.PKCS1v15, padding.PSS)


class RateLimitedEcKey(DigestSigningEcKey):
    """Wraps an EC signing key so signatures stay within a rate budget.

    ``take`` returns 0 when a token was taken, else the seconds to wait (the contract
    of :meth:`shared.domain.ratelimit.TokenBucket.try_take`); ``sleep`` waits (a
    ``Clock.sleep``). Used for HSM services with a documented signing limit, e.g. Key
    Vault HSM keys (2,000 per 10 s per vault) or Managed HSM (about 160 P-384 signs/s).
    """

    def __init__(
        self,
        inner: ec.EllipticCurvePrivateKey,
        take: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.inner = inner
        self._take = take
        self._sleep = sleep
        self.backend_name = getattr(inner, "backend_name", "remote")

    @property
    def key_id(self) -> str:
        return str(getattr(self.inner, "key_id", "rate-limited"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.inner.public_key()

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        while (wait := self._take()) > 0:
            self._sleep(wait)
        return self.inner.sign(digest, ec.ECDSA(asym_utils.Prehashed(algorithm)))
