"""Load the issuing CA (certificate + signing key) the settings point at.

``CERTROLL_KEY_BACKEND`` picks the key (when it is empty: the backend ``certroll pki init``
recorded in ``$CERTROLL_HOME/pki/pki.json``, else ``file``): ``file``
(``$CERTROLL_HOME/pki/issuing-key.pem``, development only), ``pkcs11``
(``CERTROLL_PKCS11_MODULE`` / ``_TOKEN`` / ``_KEY_LABEL`` / ``_PIN``) or ``keyvault``
(``CERTROLL_KEYVAULT_KEY_ID``, Key Vault Premium or Managed HSM).
``CERTROLL_ISSUING_CERT`` names the issuing CA certificate: a PEM path (default
``$CERTROLL_HOME/pki/issuing.pem``) or, in Azure, a blob name read through ``fetch``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from shared.domain.certs import spki_der
from shared.domain.errors import InvalidRequestError, NotFoundError, SigningError
from shared.pki.local_ca import (
    ISSUING_CERT_FILE,
    ISSUING_KEY_FILE,
    ROOT_CERT_FILE,
    recorded_key_backend,
)
from shared.ports import IssuingAuthority
from shared.settings import Settings

logger = logging.getLogger(__name__)

KEY_BACKENDS = ("file", "pkcs11", "keyvault")


def _read_certificates(
    settings: Settings, fetch: Callable[[str], bytes] | None
) -> list[x509.Certificate]:
    configured = settings.get("CERTROLL_ISSUING_CERT")
    path = Path(configured) if configured else settings.pki_dir / ISSUING_CERT_FILE
    if path.is_file():
        data = path.read_bytes()
    elif configured and fetch is not None:
        data = fetch(configured)
    else:
        raise NotFoundError(
            f"issuing CA certificate {path} not found: run `certroll pki init` or set "
            "CERTROLL_ISSUING_CERT"
        )
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidRequestError(
            "issuing_cert_invalid", f"{configured or path} holds no PEM certificate"
        ) from exc
    return certs


def configured_key_backend(settings: Settings) -> str:
    """``CERTROLL_KEY_BACKEND`` when set, else the backend the local PKI was made with
    (``certroll pki init --backend``), else ``file``."""
    return settings.get("CERTROLL_KEY_BACKEND") or recorded_key_backend(settings.pki_dir) or "file"


def load_signing_key(
    settings: Settings, backend: str | None = None
) -> tuple[CertificateIssuerPrivateKeyTypes, str]:
    """``(signing key, key id)`` for the configured backend."""
    chosen = backend or configured_key_backend(settings)
    home = settings.home
    if chosen == "file":
        from shared.adapters.filekey import load_file_key
        from shared.pki.local_ca import file_key_password

        path = settings.pki_dir / ISSUING_KEY_FILE
        if not path.exists():
            raise NotFoundError(
                f"issuing key {path} not found: run `certroll pki init --backend file` "
                "or choose another CERTROLL_KEY_BACKEND"
            )
        file_key = load_file_key(path, file_key_password(home, settings))
        return file_key, file_key.key_id
    if chosen == "pkcs11":
        from shared.adapters import pkcs11 as p11
        from shared.pki.local_ca import pkcs11_pin

        module = p11.module_path(settings.get("CERTROLL_PKCS11_MODULE"))
        if p11.is_softhsm(module):
            p11.softhsm_environment(home / "softhsm")
        token_key = p11.open_pkcs11_key(
            module=module,
            token_label=settings.get("CERTROLL_PKCS11_TOKEN"),
            key_label=settings.get("CERTROLL_PKCS11_KEY_LABEL"),
            pin=pkcs11_pin(home, settings),
        )
        return token_key, token_key.key_id
    if chosen == "keyvault":
        from shared.adapters.keyvault import open_keyvault_key

        key_id = settings.get("CERTROLL_KEYVAULT_KEY_ID")
        if not key_id:
            raise InvalidRequestError(
                "keyvault_key_missing", "CERTROLL_KEYVAULT_KEY_ID is required for keyvault"
            )
        vault_key = open_keyvault_key(key_id)
        return vault_key, vault_key.key_id
    raise InvalidRequestError(
        "key_backend_invalid",
        f"CERTROLL_KEY_BACKEND={chosen!r} is not one of {', '.join(KEY_BACKENDS)}",
    )


def authority_from_parts(
    certificates: list[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    key_id: str,
    *,
    crl_url: str | None,
    root: x509.Certificate | None = None,
) -> IssuingAuthority:
    """Check that the certificate belongs to the key and is a CA; build the authority."""
    if not certificates:
        raise InvalidRequestError("issuing_cert_invalid", "no issuing CA certificate given")
    issuing = certificates[0]
    if spki_der(issuing.public_key()) != spki_der(key.public_key()):
        raise SigningError(
            f"the issuing CA certificate {issuing.subject.rfc4514_string()} does not match "
            f"the signing key {key_id}"
        )
    try:
        bc = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca = bc.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise InvalidRequestError(
            "issuing_cert_invalid", "the issuing certificate is not a CA (basicConstraints)"
        )
    chain = tuple(c for c in certificates if c.subject != c.issuer)
    return IssuingAuthority(
        certificate=issuing,
        key=key,
        key_id=key_id,
        chain=chain or (issuing,),
        root=root,
        crl_url=crl_url,
    )


def load_authority(
    settings: Settings,
    crl_url: str | None,
    *,
    fetch: Callable[[str], bytes] | None = None,
) -> IssuingAuthority:
    """The issuing authority of ``settings`` (see the module docstring).

    ``crl_url`` is written into every leaf: pass ``crl_publisher.url_for("crl/issuing.crl")``.
    """
    certificates = _read_certificates(settings, fetch)
    key, key_id = load_signing_key(settings)
    root_path = settings.pki_dir / ROOT_CERT_FILE
    root = x509.load_pem_x509_certificate(root_path.read_bytes()) if root_path.is_file() else None
    authority = authority_from_parts(certificates, key, key_id, crl_url=crl_url, root=root)
    logger.info(
        "issuing CA %s loaded with key %s",
        authority.certificate.subject.rfc4514_string(),
        key_id,
    )
    return authority
