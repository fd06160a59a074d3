"""The ARM adapter of DPS / hub CA certificates, against a loopback stand-in of Azure
Resource Manager: paths, api-version, If-Match, bodies, and the answers' mapping."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from shared.adapters.arm_certificates import ArmCaCertificates
from shared.domain.errors import ConcurrencyError, InvalidRequestError, NotFoundError

HUB = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Devices/IotHubs/hub1"
DPS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Devices/provisioningServices/dps1"


class Token:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://management.azure.com/.default",)
        return AccessToken("arm-token", 4_102_444_800)


class Arm:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.certs: dict[str, dict[str, Any]] = {}


@pytest.fixture
def arm() -> Iterator[tuple[Arm, str]]:
    state = Arm()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def _answer(self, status: int, doc: Any = None) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path, _, query = self.path.partition("?")
            state.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "if_match": self.headers.get("If-Match"),
                    "auth": self.headers.get("Authorization"),
                    "body": body,
                }
            )
            parts = path.split("/certificates/")
            name, _, action = parts[1].partition("/")
            cert = state.certs.get(name)
            if self.command == "PUT":
                state.certs[name] = {"etag": "e1", "verified": False, "code": None}
                return self._answer(200, {"etag": "e1", "properties": {"thumbprint": "AB"}})
            if cert is None:
                return self._answer(404, {"code": "NotFound"})
            if self.headers.get("If-Match") not in (None, f'"{cert["etag"]}"'):
                return self._answer(412, {"code": "PreconditionFailed"})
            if action == "generateVerificationCode":
                cert.update(code="C0DE", etag="e2")
                return self._answer(200, {"etag": "e2", "properties": {"verificationCode": "C0DE"}})
            if action == "verify":
                cert.update(verified=True, etag="e3")
                return self._answer(200, {"etag": "e3", "properties": {"isVerified": True}})
            if self.command == "DELETE":
                del state.certs[name]
                return self._answer(200)
            return self._answer(
                200, {"etag": cert["etag"], "properties": {"isVerified": cert["verified"]}}
            )

        do_GET = do_PUT = do_POST = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("resource", "version"), [(HUB, "2023-06-30"), (DPS, "2022-12-12")])
def test_upload_code_verify_delete(arm: tuple[Arm, str], resource: str, version: str) -> None:
    state, url = arm
    certs = ArmCaCertificates(resource, Token(), endpoint=url)
    with pytest.raises(NotFoundError):
        certs.get("ca-2")
    info = certs.upload("ca-2", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    assert info.etag == "e1"
    assert info.thumbprint_sha256 == "ab"
    assert not info.verified
    coded = certs.generate_verification_code("ca-2", info.etag)
    assert coded.verification_code == "C0DE"
    with pytest.raises(ConcurrencyError):
        certs.verify("ca-2", "stale", "PEM")
    assert certs.verify("ca-2", coded.etag, "PEM").verified
    certs.delete("ca-2", "e3")
    put, *_rest = [r for r in state.requests if r["method"] == "PUT"]
    assert put["path"] == f"{resource}/certificates/ca-2"
    assert put["body"]["properties"]["certificate"].startswith("-----BEGIN CERTIFICATE")
    assert all(f"api-version={version}" in r["query"] for r in state.requests)
    assert all(r["auth"] == "Bearer arm-token" for r in state.requests)
    verify = next(
        r for r in state.requests if r["path"].endswith("/verify") and r["if_match"] == '"e2"'
    )
    assert verify["body"] == {"certificate": "PEM"}


def test_a_resource_id_that_is_neither_hub_nor_dps_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        ArmCaCertificates("/subscriptions/s/providers/Microsoft.Storage/storageAccounts/a", Token())
