"""IssuancePolicy's bounds: each limit accepted exactly at its edge, refused just past it."""

from __future__ import annotations

from typing import Any

import pytest

from shared.pki.profile import IssuancePolicy


@pytest.mark.parametrize(
    "fields",
    [
        {"renewal_fraction": 0.5},
        {"renewal_fraction": 0.9, "renewal_jitter": 0.0},
        {"renewal_jitter": 0.0},
        {"renewal_jitter": 0.2, "renewal_fraction": 0.7},
        {"renewal_fraction": 0.85, "renewal_jitter": 0.1},
        {"backdate_seconds": 0},
        {"backdate_seconds": 86400},
        {"csr_max_bytes": 256},
        {"csr_max_bytes": 4096},
    ],
)
def test_a_limit_is_accepted_at_its_edge(fields: dict[str, Any]) -> None:
    policy = IssuancePolicy(**fields)
    for name, value in fields.items():
        assert getattr(policy, name) == value


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"renewal_fraction": 0.49}, "renewal_fraction must be 0.5-0.9, not 0.49"),
        (
            {"renewal_fraction": 0.91, "renewal_jitter": 0.0},
            "renewal_fraction must be 0.5-0.9, not 0.91",
        ),
        ({"renewal_jitter": -0.01}, "renewal_jitter must be 0-0.2, not -0.01"),
        ({"renewal_jitter": 0.21}, "renewal_jitter must be 0-0.2, not 0.21"),
        (
            {"renewal_fraction": 0.9, "renewal_jitter": 0.1},
            "renewal_fraction + renewal_jitter must stay below 1",
        ),
        ({"backdate_seconds": -1}, "backdate_seconds must be 0-86400, not -1"),
        ({"backdate_seconds": 86401}, "backdate_seconds must be 0-86400, not 86401"),
        (
            {"csr_max_bytes": 255},
            "csr_max_bytes must be 256-4096 (a CSR travels as one twin string value, at "
            "most 4 KB), not 255",
        ),
        (
            {"csr_max_bytes": 4097},
            "csr_max_bytes must be 256-4096 (a CSR travels as one twin string value, at "
            "most 4 KB), not 4097",
        ),
    ],
)
def test_a_limit_is_refused_past_its_edge(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the message is checked below
        IssuancePolicy(**fields)
    assert str(caught.value) == message
