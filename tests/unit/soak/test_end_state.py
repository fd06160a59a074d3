"""What a soak keeps for diagnosis: each stop of its Azurite (and whether it had to be
killed, losing the writes since Azurite's last save), and failing devices' end state in
plain JSON."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from local.soak.azurite import PrivateAzurite
from local.soak.ending import _plain


def _azurite_stand_in(ignore_sigterm: bool) -> PrivateAzurite:
    """A PrivateAzurite whose process is a stand-in that answers SIGTERM as told."""
    handler = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""
    script = f"import signal, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(30)\n"
    azurite = PrivateAzurite(binary=Path(sys.executable))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    with proc.stdout:  # the handler is in place once it says so
        assert proc.stdout.readline().strip() == b"ready"
    azurite._proc = proc  # as start() leaves it
    return azurite


def test_a_stop_that_ends_on_sigterm_is_not_counted_as_killed() -> None:
    azurite = _azurite_stand_in(ignore_sigterm=False)
    try:
        azurite.stop(timeout=10)
    finally:
        azurite.close()
    assert len(azurite.stops) == 1
    assert azurite.stops[0][1] is False


def test_a_stop_that_needs_sigkill_is_recorded() -> None:
    azurite = _azurite_stand_in(ignore_sigterm=True)
    try:
        azurite.stop(timeout=0.5)
    finally:
        azurite.close()
    assert len(azurite.stops) == 1
    seconds, killed = azurite.stops[0]
    assert killed is True
    assert seconds >= 0.5


class _Colour(enum.StrEnum):
    RED = "red"


@dataclass
class _Row:
    at: datetime
    colour: _Colour
    tags: frozenset[str] = field(default_factory=frozenset)
    seen: list[tuple[datetime, str, int | None, bool]] = field(default_factory=list)


def test_end_state_is_plain_json() -> None:
    at = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    row = _Row(at, _Colour.RED, frozenset({"a"}), [(at, "ab", 401, True)])
    plain = _plain({"dev-1": row, "none": None})
    assert json.loads(json.dumps(plain)) == {
        "dev-1": {
            "at": "2026-12-06T12:00:00+00:00",
            "colour": "red",
            "tags": ["a"],
            "seen": [["2026-12-06T12:00:00+00:00", "ab", 401, True]],
        },
        "none": None,
    }
