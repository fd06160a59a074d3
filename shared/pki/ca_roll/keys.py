"""Issuing keys per key backend (file, PKCS#11, Key Vault / Managed HSM): a new key
for a new CA, and a CA's key opened by the reference the roll record keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from shared.domain.errors import ConflictError, InvalidRequestError
from shared.pki.authority import configured_key_backend
from shared.settings import Settings

__all__ = ["IssuingKeys"]


class IssuingKeys:
    """Issuing keys in the configured key store: made for a new CA, opened by reference."""

    def __init__(self, settings: Settings, *, credential: Any | None = None) -> None:
        self.settings = settings
        self.credential = credential

    @property
    def backend(self) -> str:
        return configured_key_backend(self.settings)

    def create(self, name: str) -> tuple[CertificateIssuerPrivateKeyTypes, str, str]:
        """A new key pair named after ``name`` (reserved in the roll record before the key
        is made): ``(key, backend, key_ref)``. For file and PKCS#11 the reference follows
        from the name, so a ``prepare`` retried after a crash finds the key it made."""
        backend = self.backend
        home = self.settings.home
        if backend == "file":
            from shared.adapters.filekey import load_file_key
            from shared.pki.local_ca import _encrypted_pem, _write_private, file_key_password

            password = file_key_password(home, self.settings, create=True)
            path = self.settings.pki_dir / f"issuing-key-{name}.pem"
            if not path.is_file():
                fresh = ec.generate_private_key(ec.SECP384R1())
                _write_private(path, _encrypted_pem(fresh, password))
            return load_file_key(path, password), backend, str(path)
        if backend == "pkcs11":
            from shared.adapters import pkcs11 as p11
            from shared.pki.local_ca import pkcs11_pin

            label = f"{self.settings.get('CERTROLL_PKCS11_KEY_LABEL')}-{name}"
            try:
                key = p11.create_issuing_key(
                    module=p11.module_path(self.settings.get("CERTROLL_PKCS11_MODULE")),
                    token_label=self.settings.get("CERTROLL_PKCS11_TOKEN"),
                    key_label=label,
                    pin=pkcs11_pin(home, self.settings),
                    softhsm_home=home / "softhsm",
                )
            except ConflictError:  # made by an earlier attempt of this step
                return self.open(backend, label), backend, label
            return key, backend, label
        if backend == "keyvault":
            from shared.adapters.keyvault import create_key_version, open_keyvault_key

            key_id = create_key_version(
                self.settings.get("CERTROLL_KEYVAULT_KEY_ID"), credential=self.credential
            )
            return open_keyvault_key(key_id, self.credential), backend, key_id
        raise InvalidRequestError("key_backend_invalid", f"unknown key backend {backend!r}")

    def open(self, backend: str, key_ref: str) -> CertificateIssuerPrivateKeyTypes:
        if backend == "file":
            from shared.adapters.filekey import load_file_key
            from shared.pki.local_ca import file_key_password

            return load_file_key(
                Path(key_ref), file_key_password(self.settings.home, self.settings)
            )
        if backend == "pkcs11":
            from shared.adapters import pkcs11 as p11
            from shared.pki.local_ca import pkcs11_pin

            module = p11.module_path(self.settings.get("CERTROLL_PKCS11_MODULE"))
            if p11.is_softhsm(module):
                p11.softhsm_environment(self.settings.home / "softhsm")
            return p11.open_pkcs11_key(
                module=module,
                token_label=self.settings.get("CERTROLL_PKCS11_TOKEN"),
                key_label=key_ref,
                pin=pkcs11_pin(self.settings.home, self.settings),
            )
        if backend == "keyvault":
            from shared.adapters.keyvault import open_keyvault_key

            return open_keyvault_key(key_ref, self.credential)
        raise InvalidRequestError("key_backend_invalid", f"unknown key backend {backend!r}")


def _key_id(key: CertificateIssuerPrivateKeyTypes, fallback: str) -> str:
    return str(getattr(key, "key_id", fallback))
