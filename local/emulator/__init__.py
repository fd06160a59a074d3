"""In-process emulator of Azure IoT Hub Device Provisioning Service and IoT Hub.

See docs/emulator.md for what is emulated, the limits enforced and their sources.
"""

from local.emulator.core import (
    DeviceHandler,
    DeviceSession,
    HubConnectError,
    RegistrationError,
    RegistrationResult,
)
from local.emulator.dps import EmulatedDps
from local.emulator.events import CONNECTIONS, LIFECYCLE, TWIN_CHANGES, EventBus
from local.emulator.fleet import FleetEmulator
from local.emulator.hub import EmulatedHub

__all__ = [
    "CONNECTIONS",
    "LIFECYCLE",
    "TWIN_CHANGES",
    "DeviceHandler",
    "DeviceSession",
    "EmulatedDps",
    "EmulatedHub",
    "EventBus",
    "FleetEmulator",
    "HubConnectError",
    "RegistrationError",
    "RegistrationResult",
]
