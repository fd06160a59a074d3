from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.bicep import Infra

REPO = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO / "infra"


@pytest.fixture(scope="session")
def infra_texts() -> dict[str, str]:
    return Infra.read_texts(INFRA_DIR)


@pytest.fixture(scope="session")
def infra(infra_texts: dict[str, str]) -> Infra:
    return Infra.from_texts(infra_texts)
