"""``certroll campaign plan``: a re-roll campaign's bound, binding budget and ETA.

Touches nothing: the figures come from the budget planner (:mod:`shared.domain.budget`)
for the configuration given on the command line.
"""

from __future__ import annotations

import argparse
import json

from cli.common import Command
from cli.exits import ExitCode
from shared.domain.budget import (
    HUB_TIERS,
    MEASURED_COST,
    SIGNING_BACKENDS,
    Configuration,
    parse_cost_overrides,
    plan,
    render_plan,
)
from shared.domain.errors import InvalidRequestError


def configure_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, required=True, help="devices to re-issue")
    parser.add_argument(
        "--hub-tier",
        default="S1",
        type=str.upper,
        choices=(*HUB_TIERS, "FREE"),
        help="IoT Hub tier",
    )
    parser.add_argument("--hub-units", type=int, default=1, help="IoT Hub units")
    parser.add_argument("--dps-instances", type=int, default=1, help="DPS instances")
    parser.add_argument("--signing", default="key-vault", choices=SIGNING_BACKENDS)
    parser.add_argument(
        "--signing-units", type=int, default=1, help="Key Vault vaults or Managed HSM partitions"
    )
    parser.add_argument("--curve", default="P-384", help="issuing key curve (Managed HSM figures)")
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.1,
        help="fraction of each limit left to the fleet's everyday traffic (default 0.1)",
    )
    parser.add_argument(
        "--cost",
        action="append",
        default=[],
        metavar="BUDGET=OPS",
        help="what one rotation spends on a budget, replacing the measured figure "
        "(repeatable; e.g. hub.identity_operations=2.1)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run_plan(args: argparse.Namespace) -> int:
    if args.devices < 0:
        raise InvalidRequestError("devices_invalid", "--devices must be >= 0")
    try:
        config = Configuration(
            hub_tier=args.hub_tier,
            hub_units=args.hub_units,
            dps_instances=args.dps_instances,
            signing=args.signing,
            signing_units=args.signing_units,
            curve=args.curve,
        )
        cost = parse_cost_overrides(args.cost, MEASURED_COST)
        result = plan(config, args.devices, cost, args.headroom)
    except ValueError as exc:
        raise InvalidRequestError("plan_invalid", str(exc)) from exc
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render_plan(result))
    return ExitCode.OK


def configure_campaign(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    plan_parser = sub.add_parser(
        "plan",
        help="bound, binding budget and ETA of a re-roll (touches nothing)",
        description="Print how fast a fleet-wide re-roll may go at Azure's documented "
        "limits, which budget binds, and how long it takes.",
    )
    configure_plan(plan_parser)
    plan_parser.set_defaults(func=run_plan)


def run_campaign(args: argparse.Namespace) -> int:  # pragma: no cover - argparse routes
    raise InvalidRequestError("campaign_action", "name an action: plan")


COMMANDS: tuple[Command, ...] = (
    Command("campaign", "fleet-wide re-roll campaigns", configure_campaign, run_campaign),
)
