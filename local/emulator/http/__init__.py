"""The fleet emulator's REST front end: the DPS and IoT Hub service APIs over loopback."""

from local.emulator.http.server import FleetHttpApp, RunningServer, serve

__all__ = ["FleetHttpApp", "RunningServer", "serve"]
