"""PEM/DER CSRs against the issuing policy: any request -> an AcceptedCsr that meets
every rule, or CsrRejectedError with a documented code; nothing else escapes."""

from __future__ import annotations

import functools
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.errors import CSR_REJECTION_CODES, CsrRejectedError
from shared.pki.csr_policy import check_csr
from tests.properties.strategies import DEVICE_ID_ALPHABET, near_device_ids
from tests.support.pki import make_csr, make_device_key

DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,64}")
MAX = 8192
KEY_KINDS = ["ec-p256", "ec-p384", "ec-p521", "ec-k256", "rsa-2048", "rsa-1024", "ed25519"]


@functools.cache
def _key(kind: str) -> Any:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return make_device_key(kind)


def _ku(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment "
        "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    values = dict.fromkeys(names, False)
    values.update(flags)
    return x509.KeyUsage(**values)


def _extensions(device_id: str) -> st.SearchStrategy[list[tuple[x509.ExtensionType, bool]]]:
    options: list[x509.ExtensionType] = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.BasicConstraints(ca=True, path_length=0),
        _ku(digital_signature=True),
        _ku(digital_signature=True, key_cert_sign=True, crl_sign=True),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.SubjectAlternativeName([x509.DNSName(device_id)]),
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_id)]),
        x509.SubjectAlternativeName([x509.DNSName("other"), x509.DNSName(device_id)]),
        x509.SubjectAlternativeName([x509.RFC822Name("a@b.c")]),
        x509.OCSPNoCheck(),
    ]
    return st.lists(st.sampled_from(options), max_size=3, unique_by=lambda e: type(e)).map(
        lambda exts: [(e, False) for e in exts]
    )


@st.composite
def csrs(draw: st.DrawFn) -> tuple[str, bytes]:
    device_id = draw(st.text(alphabet=DEVICE_ID_ALPHABET, min_size=1, max_size=64))
    kind = draw(st.sampled_from(KEY_KINDS))
    cns = draw(st.lists(st.one_of(st.just(device_id), near_device_ids), min_size=0, max_size=2))
    cns = [cn for cn in cns if 1 <= len(cn) <= 64]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns])
    if draw(st.booleans()):
        subject = x509.Name([*subject, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")])
    algorithm = (
        None
        if kind == "ed25519"
        else draw(
            st.sampled_from([hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
        )
    )
    encoding = draw(st.sampled_from([serialization.Encoding.PEM, serialization.Encoding.DER]))
    extensions = draw(_extensions(device_id))
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    csr = builder.sign(_key(kind), algorithm)
    claimed = draw(st.one_of(st.just(device_id), near_device_ids))
    return claimed, csr.public_bytes(encoding)


def _check(device_id: Any, data: Any, max_bytes: int = MAX) -> None:
    try:
        accepted = check_csr(device_id, data, max_bytes=max_bytes)
    except CsrRejectedError as exc:
        assert exc.code in CSR_REJECTION_CODES
        return
    assert DEVICE_ID.fullmatch(device_id)
    cns = accepted.csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [cn.value for cn in cns] == [device_id]
    key = accepted.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    if isinstance(key, ec.EllipticCurvePublicKey):
        assert key.curve.name in ("secp256r1", "secp384r1")
    else:
        assert 2048 <= key.key_size <= 4096
    assert isinstance(
        accepted.csr.signature_hash_algorithm, hashes.SHA256 | hashes.SHA384 | hashes.SHA512
    )
    assert accepted.csr.is_signature_valid
    for ext in accepted.csr.extensions:
        if isinstance(ext.value, x509.BasicConstraints):
            assert not ext.value.ca
        if isinstance(ext.value, x509.SubjectAlternativeName):
            assert [n.value for n in ext.value] == [device_id]
    assert re.fullmatch(r"[0-9a-f]{64}", accepted.csr_sha256)


@given(csrs())
def test_generated_csr_is_accepted_only_when_it_meets_every_rule(case: tuple[str, bytes]) -> None:
    device_id, data = case
    _check(device_id, data)


@given(csrs(), st.data())
def test_a_damaged_csr_is_rejected_with_a_code(
    case: tuple[str, bytes], data: st.DataObject
) -> None:
    device_id, raw = case
    der = (
        raw
        if not raw.startswith(b"-----")
        else x509.load_pem_x509_csr(raw).public_bytes(serialization.Encoding.DER)
    )
    damaged = bytearray(der)
    for _ in range(data.draw(st.integers(1, 4))):
        # positions drawn independently of the length (ECDSA signatures vary in size)
        at = data.draw(st.integers(0, 10**6)) % len(damaged)
        damaged[at] = data.draw(st.integers(0, 255))
    cut = 1 + data.draw(st.integers(0, 10**6)) % len(damaged)
    _check(device_id, bytes(damaged[:cut]))


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_bytes_or_text_of_any_kind(data: bytes | str) -> None:
    _check("dev-1", data)
    if isinstance(data, str):
        _check("dev-1", "-----BEGIN CERTIFICATE REQUEST-----\n" + data)


@given(st.integers(min_value=0, max_value=2000))
def test_the_size_limit_is_checked_first(max_bytes: int) -> None:
    data = make_csr("dev-1", _key("ec-p256"))
    try:
        check_csr("dev-1", data, max_bytes=max_bytes)
    except CsrRejectedError as exc:
        assert exc.code == "csr_too_large"
        assert len(data) > max_bytes
    else:
        assert len(data) <= max_bytes


def test_keys_are_built_once() -> None:
    assert _key("ec-p256") is _key("ec-p256")
