"""The issuing key as an encrypted PEM file: for development and quick starts only.

The key is decrypted into process memory, which is exactly what an HSM avoids; use the
``pkcs11`` (SoftHSM2 locally) or ``keyvault`` backend for anything that matters.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

from shared.domain.errors import SigningError
from shared.pki.keys import DigestSigningEcKey, DigestSigningRsaKey

logger = logging.getLogger(__name__)


def _load(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the issuing key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except (ValueError, TypeError) as exc:
        raise SigningError(
            f"cannot load the issuing key file {path}: wrong password or not a PEM private key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SigningError(f"{path} holds a {type(key).__name__}; only EC and RSA are supported")
    logger.warning(
        "issuing key loaded from file %s: for development only, use pkcs11 or keyvault", path
    )
    return key


_Loaded = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class _FileKey:
    """What the EC and the RSA file keys share: the file, and the check of its key type."""

    backend_name = "file"
    path: Path

    def _open(
        self, path: Path, password: bytes | None, loaded: _Loaded | None, kind: type, what: str
    ) -> _Loaded:
        key = loaded if loaded is not None else _load(path, password)
        if not isinstance(key, kind):
            raise SigningError(f"{path} is not {what}")
        self.path = path
        return key

    @property
    def key_id(self) -> str:
        return f"file:{self.path}"


class FileSigningKey(_FileKey, DigestSigningEcKey):
    """An EC issuing key read from an encrypted PEM file (development only)."""

    def __init__(
        self, path: Path, password: bytes | None, *, loaded: _Loaded | None = None
    ) -> None:
        key = self._open(
            path, password, loaded, ec.EllipticCurvePrivateKey, "an EC key; use FileRsaSigningKey"
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        self._public = key.public_key()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        return self._key.sign(digest, ec.ECDSA(asym_utils.Prehashed(algorithm)))


class FileRsaSigningKey(_FileKey, DigestSigningRsaKey):
    """An RSA issuing key read from an encrypted PEM file (development only)."""

    def __init__(
        self, path: Path, password: bytes | None, *, loaded: _Loaded | None = None
    ) -> None:
        key = self._open(
            path, password, loaded, rsa.RSAPrivateKey, "an RSA key; use FileSigningKey"
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        self._key = key
        self._public = key.public_key()

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def _sign_digest(
        self, digest: bytes, algorithm: hashes.HashAlgorithm, pad: AsymmetricPadding
    ) -> bytes:
        return self._key.sign(digest, pad, asym_utils.Prehashed(algorithm))


def load_file_key(path: Path, password: bytes | None) -> FileSigningKey | FileRsaSigningKey:
    """The signing key in ``path`` (EC or RSA, encrypted PEM)."""
    key = _load(path, password)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return FileSigningKey(path, password, loaded=key)
    return FileRsaSigningKey(path, password, loaded=key)
