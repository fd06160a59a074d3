"""certroll's rotation of device certificates: one package, one module per use case.

:class:`RotationService` (``service.py``) is the entry point; its docstring maps each
use case to its module.
"""

from __future__ import annotations

from shared.domain.rotation.context import RotationDeps
from shared.domain.rotation.results import DeviceView, DisallowResult, ReconcileOutcome
from shared.domain.rotation.service import RotationService
from shared.domain.rotation.states import (
    CONFIRMABLE,
    IN_FLIGHT,
    REPROVISION_METHOD,
    SYSTEM_ACTOR,
    WAITING_ON_DEVICE,
)

__all__ = [
    "CONFIRMABLE",
    "IN_FLIGHT",
    "REPROVISION_METHOD",
    "SYSTEM_ACTOR",
    "WAITING_ON_DEVICE",
    "DeviceView",
    "DisallowResult",
    "ReconcileOutcome",
    "RotationDeps",
    "RotationService",
]
