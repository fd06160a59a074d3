"""Microsoft's azure-iot-hub ``IoTHubJobManager`` against the emulator over TLS: scheduled
device-method jobs, the job query, and the tier's concurrent-job limit ("Maximum
concurrent jobs is 1 (for Free and S1), 5 (for S2), and 10 (for S3)", IoT Hub quotas and
throttling; one more answers 429 with 429004 ThrottlingMaxActiveJobCountExceeded,
IoT Hub troubleshoot-error-codes)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from azure.iot.hub import IoTHubJobManager
from azure.iot.hub.models import CloudToDeviceMethod, JobRequest
from msrest.exceptions import HttpOperationError

from local.emulator import FleetEmulator
from local.emulator.http import serve
from local.emulator.http.tls import loopback_tls
from shared.clock import ManualClock
from shared.pki.local_ca import generate_pki
from tests.emulator.conformance.conftest import SAS_KEY, START


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[IoTHubJobManager]:
    emulator = FleetEmulator(ManualClock(START), tier="S1")  # limits on: one job at a time
    pki = generate_pki()
    tls = loopback_tls(
        pki.issuing_certificate, pki.issuing_key, root=pki.root_certificate, directory=tmp_path
    )
    server = serve(emulator, ssl_context=tls.context)
    manager = IoTHubJobManager.from_connection_string(
        f"HostName={server.host};SharedAccessKeyName=iothubowner;SharedAccessKey={SAS_KEY}"
    )
    manager.protocol.config.connection.verify = str(tls.ca_file)
    try:
        yield manager
    finally:
        server.close()


def method_job(job_id: str) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(
            method_name="reprovision", payload={}, response_timeout_in_seconds=30
        ),
        query_condition="deviceId IN ['a', 'b']",
        start_time=START + timedelta(hours=1),
        max_execution_time_in_seconds=3600,
    )


def test_scheduled_jobs_and_the_s1_limit(jobs: IoTHubJobManager) -> None:
    created = jobs.create_scheduled_job("job-1", method_job("job-1"))
    assert created.job_id == "job-1"
    assert created.status in ("queued", "scheduled")
    assert jobs.get_scheduled_job("job-1").job_id == "job-1"

    with pytest.raises(HttpOperationError) as refused:
        jobs.create_scheduled_job("job-2", method_job("job-2"))
    assert refused.value.response.status_code == 429
    assert "ThrottlingMaxActiveJobCountExceeded" in refused.value.response.text
    assert refused.value.response.headers["iothub-errorcode"] == (
        "ThrottlingMaxActiveJobCountExceeded"
    )

    listed = jobs.query_scheduled_jobs("scheduleDeviceMethod", None)
    assert [j["jobId"] for j in listed.items] == ["job-1"]

    with pytest.raises(HttpOperationError) as missing:
        jobs.get_scheduled_job("nope")
    assert missing.value.response.status_code == 404
