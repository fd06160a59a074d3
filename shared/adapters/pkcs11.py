"""The issuing key in a PKCS#11 token (SoftHSM2 locally, any PKCS#11 HSM in production).

The private key is generated inside the token as sensitive and non-extractable; certroll
only ever asks the token to sign a digest (``CKM_ECDSA`` / ``CKM_RSA_PKCS`` /
``CKM_RSA_PKCS_PSS``). One logged-in session per key, used under a lock (a PKCS#11
session runs one operation at a time).

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library initialises; when that variable is not
set, certroll uses ``$CERTROLL_HOME/softhsm/softhsm2.conf`` (made by ``certroll pki init``)
and re-initialises the library if the variable changes within one process (tests).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchKey, NoSuchToken, PKCS11Error, UserAlreadyLoggedIn
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from shared.domain.errors import ConflictError, SigningError
from shared.pki.keys import DigestSigningEcKey, DigestSigningRsaKey

logger = logging.getLogger(__name__)

SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

_LOCK = threading.Lock()
_LIBS: dict[str, tuple[Any, str | None]] = {}  # module -> (pkcs11.lib, SOFTHSM2_CONF at init)


def module_path(configured: str = "") -> str:
    """The PKCS#11 module to load: the configured one, else an installed SoftHSM2."""
    if configured:
        return configured
    for candidate in SOFTHSM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    raise SigningError(
        "no PKCS#11 module configured and SoftHSM2 is not installed: set "
        "CERTROLL_PKCS11_MODULE or install the softhsm2 package"
    )


def is_softhsm(module: str) -> bool:
    return "softhsm" in Path(module).name.lower()


def softhsm_environment(softhsm_home: Path) -> Path:
    """Point SoftHSM2 at ``softhsm_home/softhsm2.conf`` unless SOFTHSM2_CONF is set already.

    Creates the configuration and token directory when missing; returns the config path.
    """
    current = os.environ.get("SOFTHSM2_CONF")
    if current:
        return Path(current)
    conf = softhsm_home / "softhsm2.conf"
    if not conf.exists():
        tokens = softhsm_home / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"directories.tokendir = {tokens.resolve()}\n"
            "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            encoding="utf-8",
        )
    os.environ["SOFTHSM2_CONF"] = str(conf.resolve())
    return conf


def _library(module: str, *, refresh: bool = False) -> Any:
    """The loaded module (python-pkcs11 keeps one per path), re-initialised when needed."""
    conf = os.environ.get("SOFTHSM2_CONF")
    with _LOCK:
        cached = _LIBS.get(module)
        try:
            if cached is None:
                lib = pkcs11.lib(module)
                if not lib.initialized:
                    lib.initialize()
            else:
                lib = cached[0]
                if refresh or (is_softhsm(module) and cached[1] != conf):
                    lib.reinitialize()
        except PKCS11Error as exc:
            raise SigningError(f"cannot load PKCS#11 module {module}: {exc!r}") from exc
        _LIBS[module] = (lib, conf)
        return lib


def _token(module: str, token_label: str, *, refresh: bool = False) -> Any:
    lib = _library(module, refresh=refresh)
    try:
        return lib.get_token(token_label=token_label)
    except NoSuchToken as exc:
        raise SigningError(
            f"PKCS#11 token {token_label!r} not found in {module}; run `certroll pki init "
            "--backend pkcs11` or check CERTROLL_PKCS11_TOKEN"
        ) from exc
    except PKCS11Error as exc:
        raise SigningError(f"PKCS#11 token {token_label!r}: {exc!r}") from exc


def _open(token: Any, pin: str, *, rw: bool = False) -> Any:
    """A session on ``token``; PKCS#11 logins are per process, so reuse an existing one."""
    try:
        return token.open(rw=rw, user_pin=pin)
    except UserAlreadyLoggedIn:
        return token.open(rw=rw)


class _Pkcs11Session:
    """A logged-in session plus the key handles, used one operation at a time."""

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self.key_label = key_label
        self._lock = threading.Lock()
        token = _token(module, token_label)
        try:
            self.session = _open(token, pin)
            self.private = self.session.get_key(
                object_class=ObjectClass.PRIVATE_KEY, label=key_label
            )
            self.public = self.session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=key_label)
        except NoSuchKey as exc:
            raise SigningError(
                f"no key pair labelled {key_label!r} in PKCS#11 token {token_label!r}"
            ) from exc
        except PKCS11Error as exc:
            raise SigningError(
                f"cannot open key {key_label!r} in PKCS#11 token {token_label!r}: {exc!r}"
            ) from exc

    @property
    def key_id(self) -> str:
        return f"pkcs11:{self.token_label}/{self.key_label}"

    def sign(self, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        try:
            with self._lock:
                result: bytes = self.private.sign(data, mechanism=mechanism, mechanism_param=param)
                return result
        except PKCS11Error as exc:
            raise SigningError(f"PKCS#11 signing with {self.key_id} failed: {exc!r}") from exc

    def close(self) -> None:
        try:
            self.session.close()
        except PKCS11Error:  # pragma: no cover - the library is already finalised
            logger.debug("closing PKCS#11 session of %s failed", self.key_id)


class Pkcs11SigningKey(DigestSigningEcKey):
    """An EC key held in a PKCS#11 token; ``sign()`` runs ``CKM_ECDSA`` in the token."""

    backend_name = "PKCS#11"

    def __init__(self, session: _Pkcs11Session) -> None:
        self._session = session
        try:
            der = encode_ec_public_key(session.public)
        except PKCS11Error as exc:
            raise SigningError(f"cannot read the public key of {session.key_id}") from exc
        public = serialization.load_der_public_key(der)
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise SigningError(f"{session.key_id} is not an EC key")
        self._public = public
        self._size = (public.curve.key_size + 7) // 8

    @property
    def key_id(self) -> str:
        return self._session.key_id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        raw = self._session.sign(digest, Mechanism.ECDSA)
        if len(raw) != 2 * self._size:
            raise SigningError(f"{self.key_id} returned a {len(raw)}-byte ECDSA signature")
        r = int.from_bytes(raw[: self._size], "big")
        s = int.from_bytes(raw[self._size :], "big")
        return encode_dss_signature(r, s)

    def close(self) -> None:
        self._session.close()


# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1).
_DIGEST_INFO: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS_HASH = {
    "sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256),
    "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384),
    "sha512": (Mechanism.SHA512, pkcs11.MGF.SHA512),
}


class Pkcs11RsaSigningKey(DigestSigningRsaKey):
    """An RSA key held in a PKCS#11 token (PKCS#1 v1.5 or PSS, digest made locally)."""

    backend_name = "PKCS#11"

    def __init__(self, session: _Pkcs11Session) -> None:
        self._session = session
        try:
            n = int.from_bytes(session.public[Attribute.MODULUS], "big")
            e = int.from_bytes(session.public[Attribute.PUBLIC_EXPONENT], "big")
        except PKCS11Error as exc:
            raise SigningError(f"cannot read the public key of {session.key_id}") from exc
        self._public = rsa.RSAPublicNumbers(e, n).public_key()

    @property
    def key_id(self) -> str:
        return self._session.key_id

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def _sign_digest(
        self, digest: bytes, algorithm: hashes.HashAlgorithm, pad: AsymmetricPadding
    ) -> bytes:
        if isinstance(pad, padding.PSS):
            hash_mech, mgf = _PSS_HASH[algorithm.name]
            salt = pad._salt_length
            if not isinstance(salt, int):
                salt = algorithm.digest_size  # DIGEST_LENGTH / AUTO: the usual choice
            return self._session.sign(digest, Mechanism.RSA_PKCS_PSS, (hash_mech, mgf, salt))
        return self._session.sign(_DIGEST_INFO[algorithm.name] + digest, Mechanism.RSA_PKCS)

    def close(self) -> None:
        self._session.close()


def open_pkcs11_key(
    *, module: str, token_label: str, key_label: str, pin: str
) -> Pkcs11SigningKey | Pkcs11RsaSigningKey:
    """The signing key ``key_label`` in token ``token_label`` (EC or RSA)."""
    if not pin:
        raise SigningError("no PIN for the PKCS#11 token: set CERTROLL_PKCS11_PIN")
    session = _Pkcs11Session(module, token_label, key_label, pin)
    key_type = session.private.key_type
    if key_type == KeyType.EC:
        return Pkcs11SigningKey(session)
    if key_type == KeyType.RSA:
        return Pkcs11RsaSigningKey(session)
    session.close()
    raise SigningError(f"{session.key_id} is a {key_type!r} key; only EC and RSA are supported")


def init_softhsm_token(token_label: str, pin: str, so_pin: str | None = None) -> None:
    """Create a SoftHSM2 token (in the SOFTHSM2_CONF token directory) with ``softhsm2-util``.

    The PINs never appear on the command line (where every local user sees them in the
    process list): ``softhsm2-util`` reads them from its terminal, so it runs on a
    pseudo-terminal that is given them.
    """
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise SigningError("softhsm2-util is not installed (Debian package softhsm2)")
    cmd = [tool, "--init-token", "--free", "--label", token_label]
    so = so_pin or secrets.token_hex(8)
    answers = f"{so}\n{so}\n{pin}\n{pin}\n"
    code, output = run_with_terminal_input(cmd, answers, timeout=60)
    if code != 0:
        raise SigningError(f"softhsm2-util could not create token {token_label!r}: {output}")


def run_with_terminal_input(cmd: list[str], answers: str, *, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as its stdin holding ``answers`` (what a person
    would type at its prompts); returns (exit code, stdout and stderr)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        os.write(master, answers.encode())
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            return -1, f"{cmd[0]} did not finish in {timeout} s: {output}"
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc.returncode, output


#: the EC key types ``create_issuing_key`` makes, by curve name
_EC_KEY_TYPES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1", "ec-p521": "secp521r1"}


def create_issuing_key(
    *,
    module: str,
    token_label: str,
    key_label: str,
    pin: str,
    replace: bool = False,
    softhsm_home: Path | None = None,
    key_type: str = "ec-p384",
) -> Pkcs11SigningKey | Pkcs11RsaSigningKey:
    """Generate the issuing key pair inside the token (sensitive, non-extractable).

    For SoftHSM2 the token is created when missing. An existing key pair with the same
    label raises :class:`ConflictError` unless ``replace`` (then it is destroyed first).
    ``key_type``: ``ec-p256``, ``ec-p384`` (default), ``ec-p521`` or ``rsa-3072``.
    """
    if key_type not in (*_EC_KEY_TYPES, "rsa-3072"):
        raise ValueError(f"unknown key type {key_type!r}")
    if not pin:
        raise SigningError("no PIN for the PKCS#11 token: set CERTROLL_PKCS11_PIN")
    if is_softhsm(module) and softhsm_home is not None:
        softhsm_environment(softhsm_home)
    lib = _library(module)
    if is_softhsm(module) and not any(
        t.label == token_label for t in lib.get_tokens(token_label=token_label)
    ):
        init_softhsm_token(token_label, pin)
        _library(module, refresh=True)
    token = _token(module, token_label)
    try:
        with _open(token, pin, rw=True) as session:
            existing = list(session.get_objects({Attribute.LABEL: key_label}))
            if existing and not replace:
                raise ConflictError(
                    f"PKCS#11 token {token_label!r} already holds a key labelled {key_label!r}; "
                    "use --force to replace it"
                )
            for obj in existing:
                obj.destroy()
            key_id = secrets.token_bytes(8)
            private_template = {
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SIGN: True,
            }
            if key_type.startswith("ec-"):
                curve = _EC_KEY_TYPES[key_type]
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True,
                )
                params.generate_keypair(
                    id=key_id, label=key_label, store=True, private_template=private_template
                )
            else:
                session.generate_keypair(
                    KeyType.RSA,
                    3072,
                    id=key_id,
                    label=key_label,
                    store=True,
                    private_template=private_template,
                )
    except PKCS11Error as exc:
        raise SigningError(
            f"generating key {key_label!r} in PKCS#11 token {token_label!r} failed: {exc!r}"
        ) from exc
    logger.info("generated issuing key %s in PKCS#11 token %s", key_label, token_label)
    return open_pkcs11_key(module=module, token_label=token_label, key_label=key_label, pin=pin)
