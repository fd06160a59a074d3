"""SoftHSM2 for tests: the module's path, a private token directory, the key backends."""

from __future__ import annotations

from pathlib import Path

import pytest

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")

#: ``params`` of a fixture that runs with the file key and, where installed, SoftHSM2.
KEY_BACKENDS = [
    "file",
    pytest.param(
        "pkcs11",
        marks=[
            pytest.mark.softhsm,
            pytest.mark.skipif(not SOFTHSM.exists(), reason="SoftHSM2 is not installed"),
        ],
    ),
]


def softhsm_conf(tmp_path: Path) -> Path:
    """A SoftHSM2 configuration (for ``SOFTHSM2_CONF``) with its own tokens under ``tmp_path``."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    return conf
