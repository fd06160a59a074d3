"""The reference device agent and the fleet simulator built on it (see docs/device-contract.md)."""

from local.device.agent import CertificateUse, DeviceAgent, DeviceTimeline
from local.device.contract import ContractError
from local.device.simulator import FleetSimulator, FleetSummary

__all__ = [
    "CertificateUse",
    "ContractError",
    "DeviceAgent",
    "DeviceTimeline",
    "FleetSimulator",
    "FleetSummary",
]
