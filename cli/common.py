"""What every ``certroll`` command module shares: the command record, the audited actor,
the wired services and text/JSON output."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from shared.render import to_jsonable

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` returns the exit code
    and raises typed errors (mapped once, by :mod:`cli.exits`)."""

    name: str
    help: str
    configure: Configure
    run: Run


def cli_actor(name: str | None = None) -> str:
    """The actor recorded in the audit log: ``cli:<name>``, by default the OS user."""
    if name:
        return name if name.startswith("cli:") else f"cli:{name}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER") or "unknown"
    return f"cli:{user}"


def services() -> Any:
    """The wired services (``shared.bootstrap.get_services()``; tests override them)."""
    from shared.bootstrap import get_services  # imported late: wiring reads settings

    return get_services()


def json_arg(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def print_result(value: Any, as_json: bool, out: TextIO | None = None) -> None:
    """A service result as sorted, indented JSON, or as indented ``key: value`` text."""
    stream = out or sys.stdout
    data = to_jsonable(value)
    if as_json:
        stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    _print_text(data, stream, indent=0)


def _print_text(data: Any, out: TextIO, indent: int) -> None:
    pad = "  " * indent
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                out.write(f"{pad}{key}:\n")
                _print_text(value, out, indent + 1)
            else:
                shown = "-" if value is None or value in ({}, []) else value
                out.write(f"{pad}{key}: {shown}\n")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict | list):
                out.write(f"{pad}-\n")
                _print_text(item, out, indent + 1)
            else:
                out.write(f"{pad}- {item}\n")
    else:
        out.write(f"{pad}{data}\n")
