"""A loopback token issuer: Entra ID's part in the operator API's authentication, locally.

It has its own RSA key (``$CERTROLL_HOME/token-issuer/key.pem``, mode 600), a tenant id
and an API client id (``issuer.json``), and serves on ``127.0.0.1``:

- ``/<tenant>/v2.0/.well-known/openid-configuration`` (issuer
  ``https://login.microsoftonline.com/<tenant>/v2.0``, as Entra ID publishes it);
- ``/<tenant>/discovery/v2.0/keys`` (the JWKS).

Tokens it mints carry Entra ID's issuer strings, claims and ``RS256`` signature, so the
API validates them with exactly the code that validates Entra ID tokens in Azure
(``shared.adapters.entra``); only ``CERTROLL_AUTH_METADATA_URL`` points here
(:meth:`LocalTokenIssuer.settings_values`). ``certroll serve`` and the demo start one;
``certroll token`` mints from the same key without it running.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.adapters.entra import V1_ISSUER, V2_ISSUER

ISSUER_DIR = "token-issuer"
KEY_FILE = "key.pem"
META_FILE = "issuer.json"
DEFAULT_ROLE = "Certroll.Operator"
#: the client id of the app a local operator signs in with (any fixed id will do)
LOCAL_CLIENT_APP = "00000000-0000-0000-0000-00000000c0de"


def new_signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_id(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).hexdigest()[:32]


def public_jwk(key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class LocalTokenIssuer:
    """Keys, metadata and minting of the loopback issuer kept under ``home``."""

    def __init__(self, home: Path) -> None:
        folder = Path(home) / ISSUER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        key_path, meta_path = folder / KEY_FILE, folder / META_FILE
        if key_path.is_file() and meta_path.is_file():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{key_path} does not hold an RSA key")
            self.key = loaded
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        else:
            self.key = new_signing_key()
            meta = {"tenant_id": str(uuid.uuid4()), "client_id": str(uuid.uuid4())}
            _write_private(
                key_path,
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        self.tenant_id: str = meta["tenant_id"]
        self.client_id: str = meta["client_id"]
        self.kid = key_id(self.key.public_key())
        self._published: dict[str, rsa.RSAPublicKey] = {self.kid: self.key.public_key()}
        self.hits: Counter[str] = Counter()  # requests served, by path
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # ----------------------------------------------------------------- metadata

    @property
    def audiences(self) -> tuple[str, str]:
        return f"api://{self.client_id}", self.client_id

    @property
    def issuer(self) -> str:
        return V2_ISSUER.format(tenant=self.tenant_id)

    @property
    def metadata_url(self) -> str:
        if self.url is None:
            raise RuntimeError("the token issuer is not serving")
        return f"{self.url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key, kid) for kid, key in self._published.items()]}

    def publish(self, key: rsa.RSAPublicKey) -> str:
        """Add ``key`` to the published key set (a key roll-over); returns its ``kid``."""
        kid = key_id(key)
        self._published[kid] = key
        return kid

    def openid_configuration(self) -> dict[str, Any]:
        base = f"{self.url}/{self.tenant_id}"
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "local",
        }

    def settings_values(self) -> dict[str, str]:
        """The ``CERTROLL_AUTH_*`` settings that make the API trust this issuer."""
        return {
            "CERTROLL_AUTH_TENANT_ID": self.tenant_id,
            "CERTROLL_AUTH_AUDIENCES": ",".join(self.audiences),
            "CERTROLL_AUTH_METADATA_URL": self.metadata_url,
        }

    # ----------------------------------------------------------------- tokens

    def mint(
        self,
        name: str = "operator@certroll.local",
        roles: tuple[str, ...] = (DEFAULT_ROLE,),
        *,
        app: bool = False,
        version: str = "2.0",
        lifetime: int = 3600,
        oid: str | None = None,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        """An access token as Entra ID issues it for this API.

        Delegated (``app=False``): a user ``name`` signed in through a client app, with
        ``scp``; app-only (``app=True``): a client-credentials token of the app ``name``.
        ``version`` picks the v1 (``sts.windows.net``, ``appid``) or v2 (``azp``) form.
        ``claims`` and ``headers`` override or (value ``None``) drop what is minted.
        """
        now = int(time.time())
        subject = oid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"certroll-local:{name}"))
        client = (
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"certroll-local-app:{name}"))
            if app
            else LOCAL_CLIENT_APP
        )
        body: dict[str, Any] = {
            "aud": self.audiences[0] if version == "1.0" else self.client_id,
            "iss": (V1_ISSUER if version == "1.0" else V2_ISSUER).format(tenant=self.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant_id,
            "oid": subject,
            "sub": subject,
            "ver": version,
            "uti": uuid.uuid4().hex[:22],
        }
        if roles:
            body["roles"] = list(roles)
        if version == "1.0":
            body["appid"] = client
        else:
            body["azp"] = client
        if app:
            body["idtyp"] = "app"
            if version == "1.0":
                body["app_displayname"] = name
        else:
            body.update({"scp": "user_impersonation", "name": name})
            body["preferred_username" if version == "2.0" else "upn"] = name
        for claim, value in (claims or {}).items():
            if value is None:
                body.pop(claim, None)
            else:
                body[claim] = value
        head: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        for field, value in (headers or {}).items():
            if value is None:
                head.pop(field, None)
            else:
                head[field] = value
        return jwt.encode(body, key or self.key, algorithm="RS256", headers=head)

    # ----------------------------------------------------------------- serving

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the OpenID configuration and JWKS on ``host:port``; returns the base URL."""
        if self.url is not None:
            return self.url
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits[self.path] += 1
                base = f"/{issuer.tenant_id}"
                if self.path == f"{base}/v2.0/.well-known/openid-configuration":
                    self._json(200, issuer.openid_configuration())
                elif self.path == f"{base}/discovery/v2.0/keys":
                    self._json(200, issuer.jwks())
                else:
                    self._json(404, {"error": "not_found"})

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-issuer", daemon=True
        )
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.url = None
