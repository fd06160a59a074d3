"""Commands are validated when built: a command that exists is one the service can take."""

from __future__ import annotations

import dataclasses

import pytest

from shared.domain.commands import (
    Allow,
    Disallow,
    OperatorCsr,
    StartRenewal,
    Status,
    Sweep,
    TwinReported,
)
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import csr_sha256
from shared.domain.model import Trigger
from tests.support.pki import make_csr

THUMB = "ab" * 32


def test_disallow_strips_and_requires_reason_and_actor() -> None:
    command = Disallow("dev-1", "  stolen ", " sec ")
    assert (command.reason, command.actor) == ("stolen", "sec")
    with pytest.raises(InvalidRequestError) as info:
        Disallow("dev-1", "  ", "sec")
    assert info.value.code == "reason_required"
    with pytest.raises(InvalidRequestError) as info:
        Disallow("dev-1", "stolen", "")
    assert info.value.code == "actor_required"


def test_commands_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Status("dev-1").device_id = "dev-2"  # type: ignore[misc]


@pytest.mark.parametrize("device_id", ["", "bad id/with slash", "x" * 129])
def test_a_bad_device_id_is_refused(device_id: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Status(device_id)
    assert info.value.code == "device_id_invalid"


def test_start_renewal_takes_the_reason_as_a_trigger() -> None:
    assert StartRenewal("dev-1", "compromise", "op").reason is Trigger.COMPROMISE  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonsense"):
        StartRenewal("dev-1", "nonsense", "op")  # type: ignore[arg-type]


def test_allow_parses_the_csr_framing_once() -> None:
    pem = make_csr("dev-1").decode()
    command = Allow.with_pem("dev-1", "ops", pem)
    assert command.csr == OperatorCsr(pem=pem, sha256=csr_sha256(pem))
    assert Allow.with_pem("dev-1", "ops").csr is None
    with pytest.raises(InvalidRequestError) as info:
        Allow.with_pem("dev-1", "ops", "garbage")
    assert info.value.code == "csr_invalid"
    with pytest.raises(InvalidRequestError) as info:
        Allow.with_pem("dev-1", "ops", pem, max_bytes=len(pem) - 1)
    assert info.value.code == "csr_too_large"
    with pytest.raises(InvalidRequestError) as info:
        Allow("dev-1", " ")
    assert info.value.code == "actor_required"


def test_sweep_batch_size_must_be_positive() -> None:
    assert Sweep().batch_size == 100
    with pytest.raises(InvalidRequestError) as info:
        Sweep(batch_size=0)
    assert info.value.code == "batch_size_invalid"


def test_allow_strips_its_actor() -> None:
    assert Allow("dev-1", "  ops\t").actor == "ops"


def _refusal(**fields: object) -> tuple[str, str]:
    with pytest.raises(InvalidRequestError) as info:
        Sweep(**fields)  # type: ignore[arg-type]
    return info.value.code, info.value.message


def test_sweep_page_size_is_1_to_1000() -> None:
    assert Sweep(page_size=1).page_size == 1
    assert Sweep(page_size=1000).page_size == 1000
    for page_size in (0, 1001, True):
        assert _refusal(page_size=page_size) == ("page_size_invalid", "page_size must be 1-1000")


def test_sweep_time_budget_is_positive_or_none() -> None:
    assert Sweep(time_budget_s=None).time_budget_s is None
    assert Sweep(time_budget_s=0.5).time_budget_s == 0.5
    for budget in (0, -1.0):
        assert _refusal(time_budget_s=budget) == (
            "time_budget_invalid",
            "time_budget_s must be positive",
        )


def test_twin_reported_carries_the_parsed_report() -> None:
    section = {
        "thumbprint": THUMB.upper(),
        "serialNumber": "001F",
        "notBefore": "2026-01-01T00:00:00Z",
        "notAfter": "2026-01-31T00:00:00Z",
    }
    event = TwinReported.parse("dev-1", section, 4)
    assert event.twin_version == 4
    assert event.report.certificate is not None
    assert event.report.certificate.thumbprint_sha256 == THUMB
    assert event.report.certificate.serial == "1f"
    with pytest.raises(InvalidRequestError) as info:
        TwinReported.parse("dev-1", {"csr": {"requestId": "r1", "pem": "P"}})
    assert info.value.code == "malformed_report"
    assert info.value.message == "dev-1: x509.csr.pem is not a PEM certificate request"
