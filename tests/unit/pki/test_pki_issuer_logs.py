"""The issuer's log lines: each names the device, the request and the certificate it is
about, at a level that says whether an operator must look (STYLE habit 9)."""

from __future__ import annotations

import logging

import pytest

from shared.domain.errors import CsrRejectedError, SigningError
from shared.domain.model import RevocationReason
from tests.support.pki import make_csr
from tests.unit.pki.test_pki_issuer import Env


@pytest.fixture
def env() -> Env:
    return Env()


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "shared.pki.issuer"]


def test_an_issuance_and_its_reuse_are_logged_with_device_request_and_serial(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    csr = make_csr("dev-1")
    with caplog.at_level(logging.INFO, logger="shared.pki.issuer"):
        first = env.issue("dev-1", csr, request_id="r1")
        env.issue("dev-1", csr, request_id="r1")
    serial = first.record.serial
    until = first.record.not_after.isoformat()
    assert _lines(caplog) == [
        ("INFO", f"issued {serial} to device dev-1 request r1 until {until}"),
        ("INFO", f"device dev-1 request r1: CSR already issued as {serial}"),
    ]


def test_a_signature_dropped_for_a_concurrent_record_is_logged_with_both_serials(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr)
    # as if the look-up ran before a concurrent attempt recorded the CSR
    env.ledger.list_for_device = lambda device_id: []  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="shared.pki.issuer"):
        env.issue("dev-1", csr)
    dropped = env.audit.list("dev-1")[0].detail["discardedSerial"]
    assert _lines(caplog) == [
        (
            "INFO",
            f"device dev-1 request r1: CSR already issued as {first.record.serial}; "
            f"{dropped} dropped",
        )
    ]


def test_a_signing_failure_is_logged_as_an_error(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise SigningError("hsm unavailable")

    monkeypatch.setattr("shared.pki.issuer.build_device_certificate", fail)
    with caplog.at_level(logging.INFO, logger="shared.pki.issuer"), pytest.raises(SigningError):
        env.issue("dev-1", make_csr("dev-1"), request_id="r9")
    assert _lines(caplog) == [
        ("ERROR", "signing failed for device dev-1 request r9: hsm unavailable"),
    ]


def test_a_rejection_is_logged_as_a_warning_with_its_reason(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="shared.pki.issuer"),
        pytest.raises(CsrRejectedError) as caught,
    ):
        env.issue("dev-1", make_csr("other"), request_id="r4")
    assert _lines(caplog) == [
        ("WARNING", f"CSR rejected for device dev-1 request r4: {caught.value}"),
    ]
    assert caught.value.code == "subject_mismatch"


def test_a_retired_certificate_asked_for_again_is_refused_with_its_status(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr, request_id="r1")
    env.issuer.revoke(first.record.serial, RevocationReason.KEY_COMPROMISE, "ops")
    with pytest.raises(CsrRejectedError) as caught:
        env.issue("dev-1", csr, request_id="r1")
    assert (caught.value.code, caught.value.message) == (
        "key_reused",
        f"this request's certificate {first.record.serial} is revoked; "
        "a new certificate needs a new key",
    )


def test_a_revocation_and_a_crl_publication_are_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    serial = env.issue("dev-1", make_csr("dev-1")).record.serial
    with caplog.at_level(logging.INFO, logger="shared.pki.issuer"):
        env.issuer.revoke(serial, RevocationReason.KEY_COMPROMISE, "ops")
        url = env.issuer.publish_crl()
    size = len(env.publisher.objects["crl/issuing.crl"][0])
    assert _lines(caplog) == [
        ("WARNING", f"revoked {serial} of device dev-1 (keyCompromise) by ops"),
        ("INFO", f"published the CRL ({size} bytes) at {url}"),
    ]
