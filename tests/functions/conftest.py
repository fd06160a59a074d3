from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.adapters.memory import MemoryAuditLog
from shared.bootstrap import Services, override_services
from shared.settings import Settings
from tests.functions.fakes import FakeRotation
from tests.support.tokens import auth_settings


@pytest.fixture
def fake_rotation() -> FakeRotation:
    return FakeRotation()


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


@pytest.fixture
def services(fake_rotation: FakeRotation, audit: MemoryAuditLog) -> Iterator[Services]:
    settings = Settings.from_env({"CERTROLL_STORAGE": "memory", **auth_settings()})
    with override_services(Services(settings, rotation=fake_rotation, audit=audit)) as svc:
        yield svc
