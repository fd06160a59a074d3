"""certroll's side of the device contract, played by hand against the emulator.

Only what the device tests need: ask for a CSR, sign it, put the new certificate in the
free enrollment slot, deliver it, call ``reprovision``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from local.device import contract
from local.emulator import FleetEmulator
from shared.domain.model import CertificateSlot, IndividualEnrollment, MethodResult
from tests.device.pki import TestPki


class ServiceDouble:
    def __init__(self, emulator: FleetEmulator, pki: TestPki) -> None:
        self.emulator = emulator
        self.pki = pki

    def enroll(self, device_id: str, leaf: x509.Certificate) -> None:
        pem = leaf.public_bytes(Encoding.PEM).decode()
        self.emulator.dps.put_individual(
            IndividualEnrollment(device_id, device_id, primary=CertificateSlot(pem=pem))
        )

    def reported_x509(self, device_id: str) -> dict[str, Any]:
        section = self.emulator.hub.get_twin(device_id).reported.get("x509")
        assert isinstance(section, dict)
        return section

    def ask_renewal(
        self,
        device_id: str,
        request_id: str,
        key_algorithm: str = "ec-p256",
        reason: str = "expiring",
    ) -> dict[str, Any]:
        renewal = {"requestId": request_id, "reason": reason, "keyAlgorithm": key_algorithm}
        self.emulator.hub.patch_desired(device_id, {"x509": {"renewal": renewal}})
        return renewal

    def csr_pem(self, device_id: str, request_id: str) -> str:
        csr = self.reported_x509(device_id).get("csr")
        assert isinstance(csr, dict), f"no CSR reported by {device_id}"
        assert csr["requestId"] == request_id
        pem = csr["pem"]
        assert isinstance(pem, str)
        return pem

    def sign(
        self, device_id: str, request_id: str, *, days: float = 30
    ) -> tuple[x509.Certificate, str]:
        return self.pki.sign_csr(
            self.csr_pem(device_id, request_id), self.emulator.clock.now(), days=days
        )

    def put_in_free_slot(self, device_id: str, leaf: x509.Certificate) -> None:
        enrollment = self.emulator.dps.get_individual(device_id)
        current = self.reported_x509(device_id)["thumbprint"]
        slot = CertificateSlot(pem=leaf.public_bytes(Encoding.PEM).decode())
        if enrollment.primary is not None and enrollment.primary.thumbprint_sha256 == current:
            enrollment.secondary = slot
        else:
            enrollment.primary = slot
        self.emulator.dps.put_individual(enrollment)

    def deliver(
        self, device_id: str, request_id: str, pem: str, not_after: str | None = None
    ) -> dict[str, Any]:
        if not_after is None:
            not_after = contract.format_time(
                x509.load_pem_x509_certificates(pem.encode())[0].not_valid_after_utc
            )
        marker = "-----END CERTIFICATE-----"
        chain = [p.strip() + "\n" + marker + "\n" for p in pem.split(marker) if p.strip()]
        issued = {"requestId": request_id, "certificate": chain, "notAfter": not_after}
        self.emulator.hub.patch_desired(device_id, {"x509": {"issued": issued}})
        return issued

    def reprovision(self, device_id: str, request_id: str) -> MethodResult:
        return self.emulator.hub.invoke_method(device_id, "reprovision", {"requestId": request_id})

    def rotate(
        self, device_id: str, request_id: str, step: Any, *, enroll: bool = True
    ) -> x509.Certificate:
        """The whole exchange, stepping the device between the service's moves."""
        self.ask_renewal(device_id, request_id)
        step()
        leaf, pem = self.sign(device_id, request_id)
        if enroll:
            self.put_in_free_slot(device_id, leaf)
        self.deliver(device_id, request_id, pem)
        step()
        result = self.reprovision(device_id, request_id)
        assert result.status == 200
        step()
        return leaf


ONE_DAY = timedelta(days=1)
