"""``certroll token``: an operator access token from the loopback token issuer.

The token is signed with the key ``certroll serve`` trusts (``$CERTROLL_HOME/token-issuer``,
created when absent), so it works against the local dev host:

    curl -H "x-functions-key: $(cat .certroll/function-key)" \\
         -H "Authorization: Bearer $(certroll token)" http://127.0.0.1:7071/api/devices/dev-00000

Registered with :func:`shared.cli.register_command` when ``shared.cli`` imports this module.
"""

from __future__ import annotations

import argparse

from shared.cli import EXIT_OK, register_command
from shared.domain.errors import InvalidRequestError
from shared.settings import Settings


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", default="operator@certroll.local", help="user (or, with --app, app) name"
    )
    parser.add_argument("--app", action="store_true", help="an app-only (client credentials) token")
    parser.add_argument(
        "--role",
        action="append",
        default=None,
        help="app role in 'roles' (repeatable; default: CERTROLL_OPERATOR_ROLE)",
    )
    parser.add_argument("--no-role", action="store_true", help="a token without any app role")
    parser.add_argument("--v1", action="store_true", help="the v1 token form (sts.windows.net)")
    parser.add_argument("--minutes", type=int, default=60, help="lifetime (default 60)")


def _run(args: argparse.Namespace) -> int:
    from local.token_issuer import LocalTokenIssuer

    if not 1 <= args.minutes <= 24 * 60:
        raise InvalidRequestError("argument_invalid", "--minutes must be within 1..1440")
    settings = Settings.from_env()
    roles: tuple[str, ...] = ()
    if not args.no_role:
        roles = tuple(args.role or [settings.get("CERTROLL_OPERATOR_ROLE")])
    issuer = LocalTokenIssuer(settings.home.resolve())
    print(
        issuer.mint(
            args.name,
            roles,
            app=args.app,
            version="1.0" if args.v1 else "2.0",
            lifetime=args.minutes * 60,
        )
    )
    return EXIT_OK


register_command(
    "token",
    "print an operator access token of the local token issuer (for certroll serve)",
    _configure,
    _run,
)
