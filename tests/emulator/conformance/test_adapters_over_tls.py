"""certroll's own adapters reach the TLS front end the way they reach Azure: https, with
the emulator's CA as the trust anchor (azure-core ``connection_verify``)."""

from __future__ import annotations

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline.transport import RequestsTransport

from shared.adapters.dps import DpsEnrollmentStore
from shared.adapters.iothub import IotHubRegistry
from shared.domain.model import AuthType, CertificateSlot, DeviceIdentity, IndividualEnrollment
from tests.emulator.conformance.conftest import SAS_KEY, TlsFleet
from tests.emulator.conformance.test_dps_client import make_cert, pem


def test_adapters_over_https(tls_fleet: TlsFleet) -> None:
    credential = AzureNamedKeyCredential("owner", SAS_KEY)
    transport = RequestsTransport(connection_verify=str(tls_fleet.ca_file))
    dps = DpsEnrollmentStore(tls_fleet.server.url, credential, transport=transport)
    hub = IotHubRegistry(tls_fleet.server.host, credential, transport=transport)
    try:
        assert tls_fleet.server.url.startswith("https://")
        stored = dps.put_individual(
            IndividualEnrollment("dev-1", primary=CertificateSlot(pem=pem(make_cert("dev-1"))))
        )
        assert dps.get_individual("dev-1").etag == stored.etag
        created = hub.create_device(
            DeviceIdentity("dev-1", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="c" * 64)
        )
        assert hub.get_device("dev-1").etag == created.etag
    finally:
        dps.close()
        hub.close()
