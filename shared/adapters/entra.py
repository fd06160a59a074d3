"""Entra ID access tokens, validated with PyJWT against the tenant's published keys.

:class:`EntraTokenValidator` implements :class:`~shared.ports.TokenValidator`:

- the signing keys come from the ``jwks_uri`` of the tenant's OpenID configuration
  (``CERTROLL_AUTH_METADATA_URL``; by default
  ``https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration``),
  whose ``issuer`` must be the tenant's v2 issuer. Keys are fetched with PyJWT's
  :class:`jwt.PyJWKClient` and cached for an hour (if the hourly refetch fails, the last
  keys read stay in use); a token whose ``kid`` is not in the cached set makes one
  refetch, at most once per ``MIN_REFRESH_SECONDS`` however many such tokens arrive (so
  unknown ``kid`` values cannot turn callers into a flood of fetches);
- the header must name ``RS256`` (``none``, ``HS256`` and every other algorithm are
  refused before any key is looked up) and a ``kid``;
- the signature, ``exp``/``nbf``/``iat`` (``LEEWAY_SECONDS`` of clock skew), the issuer
  (v1 ``https://sts.windows.net/<tenant>/`` or v2
  ``https://login.microsoftonline.com/<tenant>/v2.0``), the ``tid`` claim (the configured
  tenant) and the audience (``CERTROLL_AUTH_AUDIENCES``: the API's application ID URI
  and/or client id) are checked by :func:`jwt.decode`;
- the token must be an access token: ``oid`` and the client application (``azp`` in v2,
  ``appid`` in v1) are required, which ID tokens lack.

App-only tokens (client credentials) and delegated tokens are both accepted; a token
without ``scp`` is app-only. Roles are checked by the caller of this adapter
(:class:`shared.domain.auth.OperatorAuthenticator`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from shared.domain.auth import AuthUnavailableError, Caller, NotAuthenticatedError
from shared.ports import TokenValidator
from shared.settings import Settings

logger = logging.getLogger(__name__)

V1_ISSUER = "https://sts.windows.net/{tenant}/"
V2_ISSUER = "https://login.microsoftonline.com/{tenant}/v2.0"
DEFAULT_METADATA_URL = (
    "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
)
ALGORITHMS = ("RS256",)
LEEWAY_SECONDS = 60
JWKS_LIFESPAN_SECONDS = 3600
MIN_REFRESH_SECONDS = 60.0
#: after a failed metadata fetch, requests are refused for this long before the next try
METADATA_RETRY_SECONDS = 10.0
MAX_METADATA_BYTES = 64 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
REQUIRED_CLAIMS = ("exp", "nbf", "iat", "iss", "aud")
NAME_CLAIMS = ("name", "preferred_username", "upn", "unique_name", "app_displayname")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class EntraConfig:
    tenant_id: str
    audiences: tuple[str, ...]
    metadata_url: str
    leeway: float = LEEWAY_SECONDS

    @property
    def issuers(self) -> tuple[str, str]:
        return V1_ISSUER.format(tenant=self.tenant_id), V2_ISSUER.format(tenant=self.tenant_id)

    @classmethod
    def from_settings(cls, settings: Settings) -> EntraConfig:
        tenant = settings.get("CERTROLL_AUTH_TENANT_ID").strip().lower()
        audiences = tuple(
            a.strip() for a in settings.get("CERTROLL_AUTH_AUDIENCES").split(",") if a.strip()
        )
        if not _GUID.fullmatch(tenant) or not audiences:
            raise AuthUnavailableError(
                "auth_not_configured",
                "operator authentication is not configured: set CERTROLL_AUTH_TENANT_ID "
                "(a tenant id) and CERTROLL_AUTH_AUDIENCES",
            )
        url = settings.get("CERTROLL_AUTH_METADATA_URL").strip()
        url = url or DEFAULT_METADATA_URL.format(tenant=tenant)
        check_url(url)
        return cls(tenant_id=tenant, audiences=audiences, metadata_url=url)


def check_url(url: str) -> str:
    """``url`` when it is https, or http on loopback (the local token issuer)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return url
    raise AuthUnavailableError(
        "auth_misconfigured", f"{url!r} is neither https nor an http loopback address"
    )


class EntraTokenValidator(TokenValidator):
    """See the module docstring. Thread-safe; one instance per worker."""

    def __init__(
        self,
        config: EntraConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        timeout: float = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.config = config
        self._monotonic = monotonic
        self._timeout = timeout
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self._metadata_failed_at = -math.inf
        self._refreshed_at = -math.inf
        self._last_keys: list[jwt.PyJWK] = []
        self.key_fetches = 0  # forced refetches on an unknown kid (for tests and logs)

    # ----------------------------------------------------------------- validation

    def validate(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise NotAuthenticatedError(
                "token_malformed", "the bearer token is not a JWT"
            ) from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise NotAuthenticatedError(
                "token_algorithm", f"the token's algorithm {alg!r} is not allowed (RS256 only)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise NotAuthenticatedError("token_malformed", "the token header names no key (kid)")
        key = self._signing_key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(self.config.audiences),
                issuer=list(self.config.issuers),
                leeway=self.config.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticatedError("token_expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise NotAuthenticatedError(
                "token_not_yet_valid", "the token is not valid yet"
            ) from None
        except jwt.InvalidAudienceError:
            raise NotAuthenticatedError(
                "token_audience", "the token is for another audience"
            ) from None
        except jwt.InvalidIssuerError:
            raise NotAuthenticatedError(
                "token_issuer", "the token is from another issuer or tenant"
            ) from None
        except jwt.InvalidSignatureError:
            raise NotAuthenticatedError(
                "token_signature", "the token's signature does not verify"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise NotAuthenticatedError(
                "token_claims", f"the token lacks the {exc.claim!r} claim"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticatedError("token_invalid", f"the token is invalid: {exc}") from None
        return self._caller(claims)

    def _caller(self, claims: dict[str, Any]) -> Caller:
        if claims.get("tid") != self.config.tenant_id:
            raise NotAuthenticatedError("token_tenant", "the token is from another tenant")
        oid = claims.get("oid")
        app_id = claims.get("azp") or claims.get("appid")
        if not isinstance(oid, str) or not oid or not isinstance(app_id, str) or not app_id:
            raise NotAuthenticatedError(
                "token_claims", "not an access token: 'oid' and 'azp'/'appid' are required"
            )
        roles = claims.get("roles") or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise NotAuthenticatedError(
                "token_claims", "the 'roles' claim is not a list of strings"
            )
        is_app = "scp" not in claims or claims.get("idtyp") == "app"
        name = next(
            (claims[c] for c in NAME_CLAIMS if isinstance(claims.get(c), str) and claims[c]), ""
        )
        return Caller(
            object_id=oid,
            tenant_id=self.config.tenant_id,
            app_id=app_id,
            roles=frozenset(roles),
            display_name=name,
            is_app=is_app,
            token_version=str(claims.get("ver") or ""),
        )

    # ----------------------------------------------------------------- keys

    def _signing_key(self, kid: str) -> RSAPublicKey:
        client = self._client()
        try:
            found = _match(self._keys(client), kid)
            if found is None and self._may_refresh():
                logger.info("token key %s is not in the cached key set: fetching the keys", kid)
                found = _match(self._keys(client, refresh=True), kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailableError(
                "keys_unavailable", f"the tenant's signing keys could not be fetched: {exc}"
            ) from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as exc:
            raise AuthUnavailableError(
                "keys_unavailable", f"the tenant's key set is unusable: {exc}"
            ) from None
        if found is None:
            raise NotAuthenticatedError(
                "token_key_unknown", "the token's signing key (kid) is not published by the tenant"
            )
        if not isinstance(found.key, RSAPublicKey):
            raise NotAuthenticatedError("token_key_unknown", "the token's signing key is not RSA")
        return found.key

    def _keys(self, client: jwt.PyJWKClient, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The tenant's signing keys; when the hourly refetch fails, the last ones read
        (keys are announced long before they are used and kept long after)."""
        try:
            keys = client.get_signing_keys(refresh=refresh)
        except jwt.PyJWKClientConnectionError as exc:
            if not self._last_keys:
                raise
            logger.warning("signing keys could not be refetched, using the last ones: %s", exc)
            return self._last_keys
        self._last_keys = keys
        return keys

    def _may_refresh(self) -> bool:
        with self._lock:
            now = self._monotonic()
            if now - self._refreshed_at < MIN_REFRESH_SECONDS:
                return False
            self._refreshed_at = now
            self.key_fetches += 1
            return True

    def _client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._jwks is not None:
                return self._jwks
            if self._monotonic() - self._metadata_failed_at < METADATA_RETRY_SECONDS:
                raise AuthUnavailableError(
                    "keys_unavailable", "the tenant's OpenID configuration is unavailable"
                )
            try:
                jwks_uri = self._jwks_uri()
            except AuthUnavailableError:
                self._metadata_failed_at = self._monotonic()
                raise
            self._jwks = jwt.PyJWKClient(
                jwks_uri,
                cache_keys=False,  # keys are matched here, with the bounded refresh
                cache_jwk_set=True,
                lifespan=JWKS_LIFESPAN_SECONDS,
                timeout=self._timeout,
            )
            return self._jwks

    def _jwks_uri(self) -> str:
        url = self.config.metadata_url
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                raw = response.read(MAX_METADATA_BYTES + 1)
            if len(raw) > MAX_METADATA_BYTES:
                raise ValueError(f"larger than {MAX_METADATA_BYTES} bytes")
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            logger.error("OpenID configuration %s could not be read: %s", url, exc)
            raise AuthUnavailableError(
                "keys_unavailable", f"the tenant's OpenID configuration could not be read: {exc}"
            ) from None
        expected = self.config.issuers[1]
        issuer = str(meta.get("issuer", "")).replace("{tenantid}", self.config.tenant_id)
        jwks_uri = meta.get("jwks_uri")
        if issuer != expected or not isinstance(jwks_uri, str):
            logger.error("OpenID configuration %s names issuer %r, not %r", url, issuer, expected)
            raise AuthUnavailableError(
                "auth_misconfigured",
                f"the OpenID configuration at {url} is not the tenant's ({expected})",
            )
        return check_url(jwks_uri)


def _match(keys: list[jwt.PyJWK], kid: str) -> jwt.PyJWK | None:
    return next((k for k in keys if k.key_id == kid), None)
