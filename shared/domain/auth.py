"""Who may call the operator API: the caller of a request, from a verified access token.

The HTTP layer hands :class:`OperatorAuthenticator` the ``Authorization`` header (and the
platform's ``X-MS-CLIENT-PRINCIPAL`` header); it returns the :class:`Caller` or raises one
of the typed errors below. Signature, issuer, audience and lifetime are checked by a
:class:`~shared.ports.TokenValidator` (Entra ID: ``shared/adapters/entra.py``); this module
decides the rest and holds no SDK code:

- the bearer token must be there, well formed and at most ``max_token_bytes`` long;
- the ``X-MS-CLIENT-PRINCIPAL`` header is never enough on its own. It is read only when
  ``platform_auth_enforced`` says App Service Authentication runs in front of the app (and
  strips client-sent copies); it must then be present and name the same object (``oid``)
  and tenant as the validated token. Otherwise it is ignored;
- the operator app role must be among the token's ``roles`` (case-sensitive, as Entra ID
  issues it).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.domain.errors import CertrollError

if TYPE_CHECKING:
    from shared.ports import TokenValidator

#: An Entra ID access token is a few KB even with many claims; larger is refused unread.
MAX_TOKEN_BYTES = 16 * 1024
#: Claim types App Service Authentication uses for the object id in the principal header.
OID_CLAIM_TYPES = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
TID_CLAIM_TYPES = ("http://schemas.microsoft.com/identity/claims/tenantid", "tid")
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*) *$", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AuthError(CertrollError):
    """Base of the refusals decided while authenticating a caller."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotAuthenticatedError(AuthError):
    """No usable credential: no token, a token that fails validation, or a principal
    header that does not match the token (401)."""

    status = 401


class ForbiddenError(AuthError):
    """A valid caller without the operator app role (403)."""

    status = 403


class AuthUnavailableError(AuthError):
    """The tenant's signing keys could not be read, or authentication is not configured
    (503): nobody can be authenticated until that is fixed."""

    status = 503


@dataclass(frozen=True)
class Caller:
    """A caller proven by a validated access token.

    ``object_id`` is the token's ``oid`` (the user, or the service principal of an app);
    ``app_id`` the client application (``azp`` in v2 tokens, ``appid`` in v1);
    ``is_app`` is true for app-only (client credentials) tokens.
    """

    object_id: str
    tenant_id: str
    app_id: str
    roles: frozenset[str]
    display_name: str = ""
    is_app: bool = False
    token_version: str = ""

    @property
    def actor(self) -> str:
        """The audit actor: ``oid:<oid>`` (``app:<app id>`` for apps), then the display name."""
        ident = f"oid:{self.object_id}"
        if self.is_app:
            ident += f" app:{self.app_id}"
        name = clean_name(self.display_name)
        return f"{ident} ({name})" if name else ident

    def audit_detail(self) -> dict[str, str]:
        return {
            "oid": self.object_id,
            "tid": self.tenant_id,
            "appid": self.app_id,
            "kind": "app" if self.is_app else "user",
            "name": clean_name(self.display_name),
            "tokenVersion": self.token_version,
        }


def clean_name(name: str) -> str:
    """A display name fit for a log line: no control characters, at most 128 characters."""
    return _CONTROL.sub("", name).strip()[:128]


def bearer_token(authorization: str | None, max_bytes: int = MAX_TOKEN_BYTES) -> str:
    """The compact JWT of an ``Authorization: Bearer <token>`` header."""
    if authorization is None or not authorization.strip():
        raise NotAuthenticatedError("token_missing", "an Authorization: Bearer token is required")
    if len(authorization) > max_bytes + 16:
        raise NotAuthenticatedError(
            "token_too_large", f"the bearer token is larger than {max_bytes} bytes"
        )
    match = _BEARER.match(authorization.strip())
    if match is None:
        raise NotAuthenticatedError(
            "token_malformed", "the Authorization header is not 'Bearer <JWT>'"
        )
    return match.group(1)


def principal_claims(encoded: str) -> dict[str, list[str]]:
    """The claims of an ``X-MS-CLIENT-PRINCIPAL`` header (base64 JSON), by claim type."""
    text = encoded.strip()
    doc: object = None
    for altchars in (b"-_", None):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars)
            doc = json.loads(raw.decode("utf-8"))
            break
        except (binascii.Error, ValueError):
            continue
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        raise NotAuthenticatedError(
            "principal_invalid", "X-MS-CLIENT-PRINCIPAL is not a base64 JSON principal"
        )
    out: dict[str, list[str]] = {}
    for claim in doc["claims"]:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str):
            if isinstance(claim.get("val"), str):
                out.setdefault(claim["typ"], []).append(claim["val"])
    return out


def _first(claims: dict[str, list[str]], types: tuple[str, ...]) -> str | None:
    for typ in types:
        if claims.get(typ):
            return claims[typ][0]
    return None


class OperatorAuthenticator:
    """Authenticates and authorizes operator API calls (see the module docstring)."""

    def __init__(
        self,
        validator: TokenValidator,
        role: str,
        *,
        platform_auth_enforced: bool = False,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> None:
        if not role:
            raise ValueError("the operator role must not be empty")
        self.validator = validator
        self.role = role
        self.platform_auth_enforced = platform_auth_enforced
        self.max_token_bytes = max_token_bytes

    def authenticate(self, authorization: str | None, client_principal: str | None) -> Caller:
        """The caller proven by the bearer token (and, where enforced, the platform)."""
        token = bearer_token(authorization, self.max_token_bytes)
        caller = self.validator.validate(token)
        if self.platform_auth_enforced:
            self._cross_check(caller, client_principal)
        return caller

    def authorize(self, caller: Caller) -> None:
        if self.role not in caller.roles:
            raise ForbiddenError("forbidden", f"the app role {self.role!r} is required")

    def _cross_check(self, caller: Caller, client_principal: str | None) -> None:
        if not client_principal or not client_principal.strip():
            raise NotAuthenticatedError(
                "principal_missing",
                "platform authentication is enforced but X-MS-CLIENT-PRINCIPAL is absent",
            )
        claims = principal_claims(client_principal)
        oid = _first(claims, OID_CLAIM_TYPES)
        tid = _first(claims, TID_CLAIM_TYPES)
        if oid != caller.object_id or (tid is not None and tid != caller.tenant_id):
            raise NotAuthenticatedError(
                "principal_mismatch", "X-MS-CLIENT-PRINCIPAL does not match the bearer token"
            )
