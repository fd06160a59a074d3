from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from local.device import contract
from local.device.contract import ContractError
from tests.device.conftest import START
from tests.device.pki import TestPki


def test_times_are_utc_seconds_with_z() -> None:
    cest = timezone(timedelta(hours=2))
    moment = datetime(2026, 6, 1, 14, 30, 15, 999_999, tzinfo=cest)
    assert contract.format_time(moment) == "2026-06-01T12:30:15Z"
    assert contract.parse_time("2026-06-01T12:30:15Z") == datetime(
        2026, 6, 1, 12, 30, 15, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="naive"):
        contract.format_time(datetime(2026, 6, 1))


@pytest.mark.parametrize(
    "text", ["2026-06-01T12:30:15", "2026-06-01 12:30:15Z", "2026-06-01T12:30:15.5Z", 5, None]
)
def test_bad_times_are_contract_errors(text: object) -> None:
    with pytest.raises(ContractError) as info:
        contract.parse_time(text)
    assert info.value.code == "request_malformed"


def test_contract_error_codes_are_closed() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ContractError("no_such_code", "x")


def test_chain_may_end_at_the_anchor_or_below_it() -> None:
    pki = TestPki.create(START)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.leaf("dev-1", key.public_key(), START)
    contract.verify_chain([leaf, pki.issuing], pki.root, START)  # anchor issued the last
    contract.verify_chain([leaf, pki.issuing], pki.issuing, START)  # anchor is in the chain
    contract.verify_chain([leaf], pki.issuing, START)  # anchor issued the leaf
    with pytest.raises(ContractError) as info:
        contract.verify_chain([leaf], pki.root, START)
    assert info.value.code == "chain_untrusted"
    with pytest.raises(ContractError) as info:
        contract.verify_chain([leaf, pki.issuing], pki.root, START + timedelta(days=31))
    assert info.value.code == "certificate_not_valid_now"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("not an object", "request_malformed"),
        ({"requestId": "r1", "reason": "because", "keyAlgorithm": "ec-p256"}, "request_malformed"),
        ({"requestId": "", "reason": "manual"}, "request_malformed"),
        ({"requestId": "r1", "reason": "manual", "keyAlgorithm": 256}, "request_malformed"),
    ],
)
def test_malformed_renewal_requests(value: object, code: str) -> None:
    with pytest.raises(ContractError) as info:
        contract.parse_renewal(value)
    assert info.value.code == code


def test_renewal_defaults_the_key_algorithm() -> None:
    request = contract.parse_renewal({"requestId": "r1", "reason": "ca-roll"}, "ec-p384")
    assert request == contract.RenewalRequest("r1", "ca-roll", "ec-p384")
