"""The App Service Authentication principal of an HTTP request."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

ROLE_CLAIM_TYPES = frozenset(
    {"roles", "role", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}
)
NAME_CLAIM_TYPES = (
    "name",
    "preferred_username",
    "upn",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "appid",
    "azp",
    "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "oid",
)


@dataclass(frozen=True)
class Principal:
    """The caller as App Service Authentication describes it."""

    name: str
    roles: frozenset[str]
    auth_type: str = ""


class PrincipalError(Exception):
    """The principal header is absent or unreadable (the caller is not authenticated)."""


def parse_principal(encoded: str | None, name_header: str | None) -> Principal:
    """Decode ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON) and ``X-MS-CLIENT-PRINCIPAL-NAME``.

    Roles are the values of claims whose ``typ`` is ``roles`` (Entra ID app roles),
    the document's ``role_typ`` or the standard role claim URI. The name is the
    ``X-MS-CLIENT-PRINCIPAL-NAME`` header, else the ``name_typ`` claim, else the first
    of :data:`NAME_CLAIM_TYPES` present.
    """
    if not encoded or not encoded.strip():
        raise PrincipalError("no X-MS-CLIENT-PRINCIPAL header")
    text = encoded.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_")
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
            doc = json.loads(raw.decode("utf-8"))
        except (binascii.Error, ValueError):
            raise PrincipalError("X-MS-CLIENT-PRINCIPAL is not base64 JSON") from None
    if not isinstance(doc, dict):
        raise PrincipalError("X-MS-CLIENT-PRINCIPAL is not a JSON object")
    claims = doc.get("claims") or []
    if not isinstance(claims, list):
        raise PrincipalError("X-MS-CLIENT-PRINCIPAL 'claims' is not a list")
    role_types = set(ROLE_CLAIM_TYPES)
    if isinstance(doc.get("role_typ"), str):
        role_types.add(doc["role_typ"])
    values: dict[str, list[str]] = {}
    for claim in claims:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str):
            val = claim.get("val")
            if isinstance(val, str):
                values.setdefault(claim["typ"], []).append(val)
    roles = frozenset(v for typ in role_types for v in values.get(typ, []))
    name = (name_header or "").strip()
    if not name:
        name_types = [doc["name_typ"]] if isinstance(doc.get("name_typ"), str) else []
        for typ in (*name_types, *NAME_CLAIM_TYPES):
            if values.get(typ):
                name = values[typ][0].strip()
                if name:
                    break
    if not name:
        raise PrincipalError("the principal has no name")
    return Principal(name=name, roles=roles, auth_type=str(doc.get("auth_typ") or ""))
