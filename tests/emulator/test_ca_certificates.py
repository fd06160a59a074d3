"""CA certificates of the emulated DPS and hub: upload, verification code, proof of
possession; group CA references and CA-authenticated identities need a verified CA."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from local.emulator import FleetEmulator, HubConnectError
from shared.domain.errors import ConcurrencyError, InvalidRequestError, NotFoundError
from shared.domain.model import AuthType, DeviceIdentity, EnrollmentGroup
from shared.pki.ceremony import build_verification_certificate
from tests.emulator.conftest import T0
from tests.emulator.support import Ca, RecordingHandler


def pem(cert: object) -> str:
    return cert.public_bytes(Encoding.PEM).decode()  # type: ignore[attr-defined]


def prove(emu: FleetEmulator, service: str, name: str, ca: Ca) -> None:
    certs = getattr(emu, f"{service}_certificates")
    info = certs.generate_verification_code(name, certs.get(name).etag)
    assert info.verification_code
    proof = build_verification_certificate(ca.cert, ca.key, info.verification_code, now=T0)
    assert certs.verify(name, info.etag, pem(proof)).verified


def test_upload_is_unverified_and_a_group_cannot_reference_it(
    emu: FleetEmulator, issuing: Ca
) -> None:
    info = emu.dps_certificates.upload("ca-2", pem(issuing.cert))
    assert not info.verified
    with pytest.raises(InvalidRequestError) as err:
        emu.dps.put_group(EnrollmentGroup("g", ca_primary="ca-2"))
    assert err.value.code == "ca_reference_invalid"
    prove(emu, "dps", "ca-2", issuing)
    assert emu.dps.put_group(EnrollmentGroup("g", ca_primary="ca-2")).ca_primary == "ca-2"
    # the hub keeps its own certificates: DPS's proof says nothing there
    with pytest.raises(NotFoundError):
        emu.hub_certificates.get("ca-2")


def test_proof_must_carry_the_code_and_the_ca_signature(emu: FleetEmulator, issuing: Ca) -> None:
    certs = emu.hub_certificates
    certs.upload("ca", pem(issuing.cert))
    with pytest.raises(InvalidRequestError) as err:
        certs.verify("ca", certs.get("ca").etag, pem(issuing.cert))
    assert err.value.code == "verification_code_missing"
    info = certs.generate_verification_code("ca", certs.get("ca").etag)
    assert info.verification_code
    with pytest.raises(ConcurrencyError):
        certs.generate_verification_code("ca", '"stale"')
    wrong_code = build_verification_certificate(issuing.cert, issuing.key, "ABC", now=T0)
    with pytest.raises(InvalidRequestError):
        certs.verify("ca", info.etag, pem(wrong_code))
    other = Ca(issuing.cert, ec.generate_private_key(ec.SECP256R1()))
    forged = _forged(other, info.verification_code)
    with pytest.raises(InvalidRequestError):
        certs.verify("ca", info.etag, pem(forged))
    assert not certs.get("ca").verified
    proof = build_verification_certificate(
        issuing.cert, issuing.key, info.verification_code, now=T0
    )
    assert certs.verify("ca", info.etag, pem(proof)).verified


def _forged(ca: Ca, code: str) -> object:
    """A verification certificate with the right code, signed by a key not the CA's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(ca.key, hashes.SHA256())
    )


def test_ca_identities_connect_only_under_a_hub_verified_ca(
    emu: FleetEmulator, issuing: Ca
) -> None:
    emu.hub.create_device(DeviceIdentity("dev-ca", auth_type=AuthType.CERTIFICATE_AUTHORITY))
    leaf = issuing.issue("dev-ca", T0)
    emu.hub_certificates.upload("ca", pem(issuing.cert))
    with pytest.raises(HubConnectError):
        emu.connect("dev-ca", [leaf], RecordingHandler())  # uploaded, not verified
    emu.dps_certificates.upload("ca", pem(issuing.cert))
    prove(emu, "dps", "ca", issuing)
    with pytest.raises(HubConnectError):
        emu.connect("dev-ca", [leaf], RecordingHandler())  # verified in DPS only
    prove(emu, "hub", "ca", issuing)
    assert emu.connect("dev-ca", [leaf], RecordingHandler()).connected
