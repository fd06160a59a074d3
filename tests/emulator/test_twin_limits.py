"""IoT Hub's twin limits (iot-hub-devguide-device-twins.md): each string value at most
4 KB; tags, desired and reported sections at most 32 KB each. The emulator enforces them,
and what certroll puts in a twin fits them."""

from __future__ import annotations

import pytest

from local.emulator import FleetEmulator
from shared.domain.errors import InvalidRequestError
from shared.domain.model import AuthType, DeviceIdentity
from shared.pki.profile import TWIN_STRING_MAX_BYTES, IssuancePolicy
from tests.emulator.conftest import T0
from tests.emulator.support import RecordingHandler, self_signed, thumbprint


def _device(emu: FleetEmulator) -> object:
    cert = self_signed("dev-1", T0)
    emu.hub.create_device(
        DeviceIdentity("dev-1", auth_type=AuthType.SELF_SIGNED, primary_thumbprint=thumbprint(cert))
    )
    return emu.connect("dev-1", [cert], RecordingHandler())


def test_a_string_value_over_4_kb_is_refused(emu: FleetEmulator) -> None:
    session = _device(emu)
    emu.hub.patch_desired("dev-1", {"a": "x" * 4096})
    with pytest.raises(InvalidRequestError, match="4 KB"):
        emu.hub.patch_desired("dev-1", {"a": "x" * 4097})
    with pytest.raises(InvalidRequestError, match="4 KB"):
        session.report({"b": ["y" * 5000]})  # type: ignore[attr-defined]


def test_a_section_over_32_kb_is_refused_after_the_merge(emu: FleetEmulator) -> None:
    session = _device(emu)
    for i in range(7):  # each patch is small; together they pass 32 KB
        emu.hub.patch_desired("dev-1", {f"k{i}": "x" * 4000})
    with pytest.raises(InvalidRequestError, match="32 KB"):
        emu.hub.patch_desired("dev-1", {"k7": "x" * 4000, "k8": "x" * 4000})
    for i in range(8):
        session.report({f"r{i}": "y" * 4000})  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError, match="32 KB"):
        session.report({"r9": "y" * 4000})  # type: ignore[attr-defined]


def test_the_csr_limit_fits_one_twin_string() -> None:
    assert IssuancePolicy().csr_max_bytes <= TWIN_STRING_MAX_BYTES
    with pytest.raises(ValueError, match="4 KB"):
        IssuancePolicy(csr_max_bytes=TWIN_STRING_MAX_BYTES + 1)
