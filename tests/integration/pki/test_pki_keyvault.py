"""KeyVaultSigningKey against a loopback stand-in that answers like Key Vault's REST API."""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.x509.oid import NameOID

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
from tests.support.pki import assert_is_device_leaf, make_csr, pkilint_certificate


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StaticCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("static-test-token", int(time.time()) + 3600)


class Vault:
    """State of the stand-in: keys by name, request log, and how many 429s to answer."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {}
        self.requests: list[tuple[str, str, float]] = []
        self.throttle_signs = 0
        self.base_url = ""

    def jwk(self, name: str) -> dict[str, Any]:
        key = self.keys[name]
        kid = f"{self.base_url}/keys/{name}/v1"
        if isinstance(key, ec.EllipticCurvePrivateKey):
            nums = key.public_key().public_numbers()
            size = (key.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
            return {
                "kid": kid,
                "kty": "EC-HSM",
                "crv": crv,
                "key_ops": ["sign", "verify"],
                "x": _b64(nums.x.to_bytes(size, "big")),
                "y": _b64(nums.y.to_bytes(size, "big")),
            }
        rnums = key.public_key().public_numbers()
        return {
            "kid": kid,
            "kty": "RSA-HSM",
            "key_ops": ["sign", "verify"],
            "n": _b64(rnums.n.to_bytes((rnums.n.bit_length() + 7) // 8, "big")),
            "e": _b64(rnums.e.to_bytes(3, "big")),
        }

    def sign(self, name: str, alg: str, digest: bytes) -> bytes:
        key = self.keys[name]
        hash_alg = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            der = key.sign(digest, ec.ECDSA(Prehashed(hash_alg)))
            r, s = decode_dss_signature(der)
            size = (key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
            if alg.startswith("PS")
            else padding.PKCS1v15()
        )
        return key.sign(digest, pad, Prehashed(hash_alg))


def _handler(vault: Vault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == "Bearer static-test-token":
                return True
            self._send(
                401,
                {"error": {"code": "Unauthorized", "message": "no token"}},
                {
                    "WWW-Authenticate": 'Bearer authorization="https://login.microsoftonline.com/'
                    '00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"'
                },
            )
            return False

        def _key_name(self) -> str | None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) >= 2 and parts[0] == "keys" and parts[1] in vault.keys:
                return parts[1]
            return None

        def do_GET(self) -> None:
            vault.requests.append(("GET", self.path, time.monotonic()))
            if not self._authorized():
                return
            name = self._key_name()
            if name is None:
                self._send(404, {"error": {"code": "KeyNotFound", "message": "no such key"}})
                return
            self._send(200, {"key": vault.jwk(name), "attributes": {"enabled": True}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            vault.requests.append(("POST", self.path, time.monotonic()))
            if not self._authorized():
                return
            name = self._key_name()
            if name is None or not self.path.split("?")[0].endswith("/sign"):
                self._send(404, {"error": {"code": "KeyNotFound", "message": "no such key"}})
                return
            if vault.throttle_signs > 0:
                vault.throttle_signs -= 1
                self._send(
                    429,
                    {"error": {"code": "Throttled", "message": "Request was not processed"}},
                    {"Retry-After": "1"},
                )
                return
            signature = vault.sign(name, body["alg"], _unb64(body["value"]))
            self._send(200, {"kid": vault.jwk(name)["kid"], "value": _b64(signature)})

    return Handler


def _tls_files(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp / "tls.pem"
    key_path = tmp / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[tuple[Vault, dict[str, Any]]]:
    state = Vault()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    cert, key = _tls_files(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kwargs = {
        "verify_challenge_resource": False,
        "connection_verify": str(cert),
        "retry_backoff_factor": 0.01,
    }
    try:
        yield state, kwargs
    finally:
        server.shutdown()
        server.server_close()


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
