"""Hypothesis strategies for what reaches certroll from outside: JSON documents of any
shape, device ids (valid and nearly valid), timestamps, thumbprints, twin reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

DEVICE_ID_ALPHABET = "ABCXYZabcxyz0189-.%_*?!(),:=@$'"

#: Any JSON value (small): what a sender could put anywhere in a document.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

valid_device_ids = st.text(alphabet=DEVICE_ID_ALPHABET, min_size=1, max_size=64)
#: Strings near a device id: valid ones with a stray character, blank, too long, non-ASCII.
near_device_ids = st.one_of(
    valid_device_ids,
    valid_device_ids.map(lambda s: s + "\n"),
    valid_device_ids.map(lambda s: "\n" + s),
    valid_device_ids.map(lambda s: s + " "),
    valid_device_ids.map(lambda s: s + "/x"),
    st.just(""),
    st.text(alphabet=DEVICE_ID_ALPHABET, min_size=129, max_size=140),
    st.text(max_size=20),
)
any_device_id_value = st.one_of(near_device_ids, json_values)

hex64 = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
near_hex64 = st.one_of(
    hex64,
    hex64.map(lambda s: s + "\n"),
    hex64.map(lambda s: s[:-1]),
    hex64.map(lambda s: s + "0"),
    hex64.map(lambda s: s[:-1] + "g"),
    st.text(max_size=70),
)
serial_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64)

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


timestamps = st.one_of(
    moments.map(iso),
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%f") + "1Z"),
    moments.map(lambda m: m.astimezone(UTC).replace(tzinfo=None).isoformat()),
    st.text(max_size=30),
    json_values,
)

request_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z")
near_request_ids = st.one_of(
    request_ids, request_ids.map(lambda s: s + "\n"), st.text(max_size=10), json_values
)

PEM = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


@st.composite
def certificate_facts(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(moments)
    days = draw(st.integers(min_value=-3, max_value=800))
    return {
        "thumbprint": draw(st.one_of(hex64, near_hex64, json_values)),
        "serialNumber": draw(
            st.one_of(serial_hex, serial_hex.map(lambda s: s + "\n"), json_values)
        ),
        "notBefore": draw(st.one_of(st.just(iso(start)), timestamps)),
        "notAfter": draw(st.one_of(st.just(iso(start + timedelta(days=days))), timestamps)),
    }


@st.composite
def x509_sections(draw: st.DrawFn) -> Any:
    """A reported ``x509`` twin section: mostly well-shaped, with any part perturbed."""
    section: dict[str, Any] = {}
    if draw(st.booleans()):
        section.update(draw(certificate_facts()))
    if draw(st.booleans()):
        section["csr"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "requestId": near_request_ids,
                        "pem": st.one_of(st.just(PEM), st.text(max_size=50), json_values),
                    }
                ),
                json_values,
            )
        )
    if draw(st.booleans()):
        section["renewal"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "requestId": near_request_ids,
                        "status": st.sampled_from(["installed", "failed", "Installed", ""])
                        | json_values,
                    },
                    optional={"error": json_values, "errorCode": json_values},
                ),
                json_values,
            )
        )
    if draw(st.booleans()):
        section.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return section if draw(st.integers(0, 9)) else draw(json_values)


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")
