"""The ``certroll`` console script: one parser built from :data:`COMMAND_MODULES`, one
error table (:mod:`cli.exits`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from cli import ca, campaign, localstack, pki, rotation, soak
from cli.common import Command, Run
from cli.exits import ExitCode, exit_for
from shared.domain.errors import CertrollError

#: The modules whose ``COMMANDS`` make up ``certroll``, in help order.
COMMAND_MODULES: tuple[ModuleType, ...] = (pki, ca, rotation, campaign, localstack, soak)


def commands() -> dict[str, Command]:
    """Every subcommand by name; a name defined twice is a programming error."""
    found: dict[str, Command] = {}
    for module in COMMAND_MODULES:
        for command in module.COMMANDS:
            if command.name in found:
                raise ValueError(f"certroll command {command.name!r} is defined twice")
            found[command.name] = command
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certroll", description="Rotate the X.509 certificates of an Azure IoT fleet."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in sorted(commands().values(), key=lambda c: c.name):
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see :mod:`cli.exits`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else ExitCode.REJECTED
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    func: Run | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return ExitCode.REJECTED
    try:
        return int(func(args))
    except CertrollError as exc:
        code, line = exit_for(exc)
        print(line, file=sys.stderr)
        return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
