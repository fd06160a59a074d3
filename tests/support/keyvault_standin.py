"""A loopback stand-in that answers like Key Vault's keys REST API (get key, sign).

    with serve_vault(tmp_path) as (vault, kwargs):
        vault.keys["issuing"] = ec.generate_private_key(ec.SECP384R1())
        key = open_keyvault_key(f"{vault.base_url}/keys/issuing/v1", StaticCredential(), **kwargs)

``kwargs`` make the Key Vault client trust the stand-in's TLS certificate and skip the
challenge resource check; ``Vault.throttle_signs`` answers that many signs with 429.
"""

from __future__ import annotations

import base64
import contextlib
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

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.x509.oid import NameOID


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
            crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
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
            key = vault.keys[name]
            if isinstance(key, ec.EllipticCurvePrivateKey):
                # like Key Vault: each curve signs with its own algorithm only (RFC 7518)
                paired = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
                if body["alg"] != paired[key.curve.name]:
                    self._send(
                        400,
                        {
                            "error": {
                                "code": "BadParameter",
                                "message": f"{body['alg']} does not match the key's curve",
                            }
                        },
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


@contextlib.contextmanager
def serve_vault(tmp: Path) -> Iterator[tuple[Vault, dict[str, Any]]]:
    """A :class:`Vault` served over TLS on a loopback port (TLS files written to ``tmp``),
    and the keyword arguments that let a Key Vault key client reach it."""
    state = Vault()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    cert, key = _tls_files(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kwargs: dict[str, Any] = {
        "verify_challenge_resource": False,
        "connection_verify": str(cert),
        "retry_backoff_factor": 0.01,
    }
    try:
        yield state, kwargs
    finally:
        server.shutdown()
        server.server_close()
