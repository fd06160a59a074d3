"""A small test PKI (root -> issuing CA -> device leaves) built with ``cryptography``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.pki.local_ca import CA_KEY_USAGE


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    now: datetime,
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer else _name(cn)
    signer = issuer[1] if issuer else key
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(signer, hashes.SHA256())
    )


@dataclass
class TestPki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    issuing: x509.Certificate
    issuing_key: ec.EllipticCurvePrivateKey

    __test__ = False  # not a test class

    @classmethod
    def create(cls, now: datetime, name: str = "Test") -> TestPki:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _ca(f"{name} Root CA", root_key, None, now)
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing = _ca(f"{name} Issuing CA", issuing_key, (root, root_key), now)
        return cls(root, root_key, issuing, issuing_key)

    def leaf(
        self,
        cn: str,
        public_key: CertificateIssuerPublicKeyTypes,
        now: datetime,
        *,
        days: float = 30,
        not_before: datetime | None = None,
        ca: bool = False,
    ) -> x509.Certificate:
        start = not_before or now - timedelta(minutes=5)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.issuing_key, hashes.SHA256())
        )

    def sign_csr(
        self, csr_pem: str, now: datetime, *, days: float = 30
    ) -> tuple[x509.Certificate, str]:
        """Sign a CSR as the issuing CA; returns the leaf and the chain PEM (leaf, issuing)."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert isinstance(cn, str)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        leaf = self.leaf(cn, public_key, now, days=days)
        return leaf, chain_pem([leaf, self.issuing])


def chain_pem(chain: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in chain)


def device_credentials(
    pki: TestPki, device_id: str, now: datetime, *, days: float = 30
) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, [pki.leaf(device_id, key.public_key(), now, days=days), pki.issuing]
