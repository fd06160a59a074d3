"""The issuing key in Azure Key Vault (Premium, HSM-backed) or Azure Managed HSM.

``KeyVaultSigningKey`` / ``KeyVaultRsaSigningKey`` are ``cryptography`` private keys whose
``sign()`` hashes locally and sends only the digest to ``CryptographyClient.sign``
(ES256/ES384/ES512, RS256..., PS256...). Key Vault returns ECDSA signatures as raw
``r || s``; they are re-encoded as DER for X.509. The public key comes from
``KeyClient.get_key`` (the JWK) once, at construction.

Key ids: ``https://<vault>.vault.azure.net/keys/<name>/<version>`` or
``https://<hsm>.managedhsm.azure.net/keys/<name>/<version>`` (other Azure clouds'
suffixes work too; ``http`` is accepted only for loopback stand-ins in tests).
Errors: 429 -> :class:`ThrottledError` with the service's Retry-After (after the
azure-core retry policy, which honours Retry-After, has given up); anything else ->
:class:`SigningError`.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import AzureError, HttpResponseError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.adapters.retry_after import retry_after_seconds
from shared.domain.errors import InvalidRequestError, SigningError, ThrottledError
from shared.pki.keys import DigestSigningEcKey, DigestSigningRsaKey

logger = logging.getLogger(__name__)

_KEY_PATH = re.compile(r"/keys/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]+))?/?")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_RSA_PKCS1 = {"sha256": "RS256", "sha384": "RS384", "sha512": "RS512"}
_RSA_PSS = {"sha256": "PS256", "sha384": "PS384", "sha512": "PS512"}


def parse_key_id(key_id: str) -> tuple[str, str, str | None]:
    """``(vault_url, key name, version or None)``; InvalidRequestError when malformed."""
    url = urlparse(key_id.strip())
    match = _KEY_PATH.fullmatch(url.path or "")
    secure = url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK)
    if not url.netloc or not match or not secure:
        raise InvalidRequestError(
            "keyvault_key_id_invalid",
            f"{key_id!r} is not a Key Vault key id (https://<vault>.vault.azure.net/keys/"
            "<name>/<version> or https://<hsm>.managedhsm.azure.net/keys/<name>/<version>)",
        )
    return f"{url.scheme}://{url.netloc}", match["name"], match["version"]


def _b64url(value: bytes | str | None) -> bytes:
    if value is None:
        raise SigningError("the Key Vault key has no public key material")
    if isinstance(value, bytes):
        return value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _translate(exc: AzureError, key_id: str, what: str) -> Exception:
    if isinstance(exc, HttpResponseError) and exc.status_code == 429:
        headers = getattr(exc.response, "headers", None)
        retry_after = retry_after_seconds(headers, 1.0)
        return ThrottledError(f"Key Vault throttled {what} with {key_id}", retry_after)
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    suffix = f" (HTTP {status})" if status else ""
    return SigningError(f"Key Vault {what} with {key_id} failed{suffix}: {exc.message}")


class _KeyVaultClient:
    """The key's ``KeyClient`` + ``CryptographyClient`` and its JWK."""

    def __init__(self, key_id: str, credential: Any | None, **client_kwargs: Any) -> None:
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient

        vault_url, name, version = parse_key_id(key_id)
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        key_client = KeyClient(vault_url, credential, **client_kwargs)
        try:
            key = key_client.get_key(name, version)
        except AzureError as exc:
            raise _translate(exc, key_id, "reading the key") from exc
        self.key_id: str = key.id or key_id
        self.jwk: Any = key.key  # JsonWebKey sets its fields dynamically
        self.crypto = CryptographyClient(self.key_id, credential, **client_kwargs)

    def sign(self, algorithm: str, digest: bytes) -> bytes:
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        try:
            result = self.crypto.sign(SignatureAlgorithm(algorithm), digest)
        except AzureError as exc:
            raise _translate(exc, self.key_id, "signing") from exc
        signature: bytes = result.signature
        return signature


class KeyVaultSigningKey(DigestSigningEcKey):
    """An EC key in Key Vault / Managed HSM (``EC-HSM``, P-256/P-384/P-521)."""

    backend_name = "Key Vault"

    def __init__(
        self,
        key_id: str,
        credential: Any | None = None,
        *,
        _client: _KeyVaultClient | None = None,
        **client_kwargs: Any,
    ) -> None:
        """``client_kwargs`` go to both SDK clients (e.g. ``verify_challenge_resource``,
        ``retry_total``, ``connection_verify``, ``transport``)."""
        self._client = _client or _KeyVaultClient(key_id, credential, **client_kwargs)
        jwk = self._client.jwk
        crv = str(getattr(jwk.crv, "value", jwk.crv) or "")
        if crv not in _EC_CURVES:
            raise SigningError(f"{self._client.key_id} is not an EC P-256/384/521 key ({jwk.kty})")
        x, y = _b64url(jwk.x), _b64url(jwk.y)
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), _EC_CURVES[crv]
        )
        self._public = numbers.public_key()
        self._size = (self._public.curve.key_size + 7) // 8

    @property
    def key_id(self) -> str:
        return self._client.key_id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        # Key Vault signs each curve with its own hash only (ES256/ES384/ES512, RFC 7518)
        pairing = self.signature_algorithm
        if algorithm.name != pairing.hash.name:
            raise ValueError(
                f"Key Vault signs {pairing.jwk_curve} keys with {pairing.jose} "
                f"({pairing.hash.name}), not {algorithm.name}"
            )
        raw = self._client.sign(pairing.jose, digest)
        if len(raw) != 2 * self._size:
            raise SigningError(f"Key Vault returned a {len(raw)}-byte ECDSA signature")
        r = int.from_bytes(raw[: self._size], "big")
        s = int.from_bytes(raw[self._size :], "big")
        return encode_dss_signature(r, s)


class KeyVaultRsaSigningKey(DigestSigningRsaKey):
    """An RSA key in Key Vault / Managed HSM (``RSA-HSM``), PKCS#1 v1.5 or PSS."""

    backend_name = "Key Vault"

    def __init__(
        self,
        key_id: str,
        credential: Any | None = None,
        *,
        _client: _KeyVaultClient | None = None,
        **client_kwargs: Any,
    ) -> None:
        self._client = _client or _KeyVaultClient(key_id, credential, **client_kwargs)
        jwk = self._client.jwk
        if jwk.n is None or jwk.e is None:
            raise SigningError(f"{self._client.key_id} is not an RSA key ({jwk.kty})")
        n = int.from_bytes(_b64url(jwk.n), "big")
        e = int.from_bytes(_b64url(jwk.e), "big")
        self._public = rsa.RSAPublicNumbers(e, n).public_key()

    @property
    def key_id(self) -> str:
        return self._client.key_id

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def _sign_digest(
        self, digest: bytes, algorithm: hashes.HashAlgorithm, pad: AsymmetricPadding
    ) -> bytes:
        table = _RSA_PSS if isinstance(pad, padding.PSS) else _RSA_PKCS1
        return self._client.sign(table[algorithm.name], digest)


def open_keyvault_key(
    key_id: str, credential: Any | None = None, **client_kwargs: Any
) -> KeyVaultSigningKey | KeyVaultRsaSigningKey:
    """The Key Vault signing key ``key_id`` (EC or RSA, chosen from its JWK)."""
    client = _KeyVaultClient(key_id, credential, **client_kwargs)
    if client.jwk.crv:
        return KeyVaultSigningKey(key_id, _client=client)
    return KeyVaultRsaSigningKey(key_id, _client=client)


def create_key_version(key_id: str, credential: Any | None = None, **client_kwargs: Any) -> str:
    """A new version of the key ``key_id`` names (same name, same curve or size, an HSM
    key that cannot be exported, sign/verify only); its versioned key id.

    A new version keeps the role assignments made on the key (``Key Vault Crypto User``
    on ``keys/<name>``), so the Function App can sign with it at once. Creating it needs
    ``Key Vault Crypto Officer`` (or Managed HSM Crypto Officer): an operator's step.
    """
    from azure.keyvault.keys import KeyClient, KeyOperation

    client = _KeyVaultClient(key_id, credential, **client_kwargs)
    vault_url, name, _version = parse_key_id(key_id)
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    keys = KeyClient(vault_url, credential, **client_kwargs)
    operations: list[str | KeyOperation] = [KeyOperation.sign, KeyOperation.verify]
    try:
        if client.jwk.crv:
            made = keys.create_ec_key(
                name,
                curve=client.jwk.crv,
                hardware_protected=True,
                key_operations=operations,
                exportable=False,
            )
        else:
            size = len(_b64url(client.jwk.n)) * 8
            made = keys.create_rsa_key(
                name,
                size=size,
                hardware_protected=True,
                key_operations=operations,
                exportable=False,
            )
    except AzureError as exc:
        raise _translate(exc, key_id, "creating a key version") from exc
    new_id: str = made.id or ""
    if not new_id:
        raise SigningError(f"Key Vault returned no id for the new version of {name}")
    return new_id
