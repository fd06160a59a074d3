"""The ``certroll`` console script.

Subcommands live in their own modules and are listed in :data:`COMMAND_MODULES`; each
module that exists is imported when the parser is built. A module adds its commands in
either of two ways:

- at import time, with :func:`register_command` (name, help, configure, run); or
- with a module-level ``register(subparsers)`` function that adds parsers to the
  ``argparse`` sub-parser action and sets ``func`` (``parser.set_defaults(func=run)``).

``run(args) -> int`` returns the exit code. Exceptions are mapped once, here:
``CsrRejectedError`` -> 2 (``rejected: <code>: <message>`` on stderr),
``InvalidRequestError`` / ``DeviceDisallowedError`` -> 2, ``NotFoundError`` -> 3,
``ConflictError`` -> 4, any other ``CertrollError`` -> 1.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.domain.errors import (
    CertrollError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
)

logger = logging.getLogger(__name__)

#: Modules that add subcommands; those that do not exist (yet) are skipped.
COMMAND_MODULES: tuple[str, ...] = (
    "shared.pki.commands",
    "shared.rotation_commands",
    "shared.campaign_commands",
    "shared.domain.commands",
    "local.commands",
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Configure
    run: Run


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, configure: Configure, run: Run) -> None:
    """Add (or replace) the subcommand ``name``."""
    COMMANDS[name] = Command(name, help, configure, run)


def cli_actor() -> str:
    """The actor recorded in the audit log for CLI calls: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def _import_command_modules() -> list[object]:
    loaded: list[object] = []
    for name in COMMAND_MODULES:
        try:
            loaded.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if name == missing or name.startswith(missing + "."):
                continue  # the module is not there (yet)
            raise
    return loaded


def build_parser() -> argparse.ArgumentParser:
    modules = _import_command_modules()
    parser = argparse.ArgumentParser(
        prog="certroll", description="Rotate the X.509 certificates of an Azure IoT fleet."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in sorted(COMMANDS.values(), key=lambda c: c.name):
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(func=command.run)
    for module in modules:
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_REJECTED
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    func: Run | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_REJECTED
    try:
        return func(args)
    except CsrRejectedError as exc:
        print(f"rejected: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REJECTED
    except (InvalidRequestError, DeviceDisallowedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except NotFoundError as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ConflictError as exc:
        print(f"conflict: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except CertrollError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    # ``python -m shared.cli``: run the imported module's ``main`` so commands registered
    # by other modules (into ``shared.cli``, not ``__main__``) are all there
    from shared import cli

    sys.exit(cli.main())
