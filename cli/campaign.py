"""``certroll campaign``: re-roll campaigns.

- ``plan``: a re-roll's bound, binding budget and ETA. Touches nothing: the figures come
  from the budget planner (:mod:`shared.domain.budget`) for the configuration given.
- ``start``, ``status``, ``list``, ``pause``, ``resume``, ``abort``, ``run``: the campaign
  service (:mod:`shared.domain.campaign_engine`) on the configured storage, hub and
  queue. The actor recorded is ``cli:<os user>`` (or ``cli:<--actor>``).
"""

from __future__ import annotations

import argparse
import json

from cli.common import Command, cli_actor, json_arg, print_result, services
from cli.exits import ExitCode
from shared.domain.budget import (
    HUB_TIERS,
    MEASURED_COST,
    SIGNING_BACKENDS,
    Configuration,
    parse_cost_overrides,
    plan,
)
from shared.domain.budget_report import render_plan
from shared.domain.campaign import AbortCriteria, CampaignState
from shared.domain.errors import InvalidRequestError
from shared.domain.model import Trigger


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


# --------------------------------------------------------------------------- campaigns


def run_start(args: argparse.Namespace) -> int:
    try:
        criteria = AbortCriteria(args.abort_min_executed, args.abort_failure_percentage)
    except ValueError as exc:
        raise InvalidRequestError("abort_criteria_invalid", str(exc)) from None
    campaign = services().campaign_service.start(
        args.query,
        args.reason,
        cli_actor(args.actor),
        campaign_id=args.id,
        abort_criteria=criteria,
        devices_expected=args.devices_expected,
        run=args.run,
    )
    print_result(services().campaign_service.status(campaign.campaign_id), args.json)
    return ExitCode.OK


def run_status(args: argparse.Namespace) -> int:
    print_result(services().campaign_service.status(args.campaign_id), args.json)
    return ExitCode.OK


def run_list(args: argparse.Namespace) -> int:
    states = {CampaignState(s) for s in args.state} if args.state else None
    print_result(services().campaign_service.list(states), args.json)
    return ExitCode.OK


def run_pause(args: argparse.Namespace) -> int:
    svc = services().campaign_service
    svc.pause(args.campaign_id, cli_actor(args.actor), args.note)
    print_result(svc.status(args.campaign_id), args.json)
    return ExitCode.OK


def run_resume(args: argparse.Namespace) -> int:
    svc = services().campaign_service
    svc.resume(args.campaign_id, cli_actor(args.actor))
    print_result(svc.status(args.campaign_id), args.json)
    return ExitCode.OK


def run_abort(args: argparse.Namespace) -> int:
    note = (args.note or "").strip()
    if not note:
        raise InvalidRequestError("note_required", "--note must say why the campaign is aborted")
    svc = services().campaign_service
    svc.abort(args.campaign_id, cli_actor(args.actor), note)
    print_result(svc.status(args.campaign_id), args.json)
    return ExitCode.OK


def run_step(args: argparse.Namespace) -> int:
    print_result(services().campaign_service.run(args.campaign_id), args.json)
    return ExitCode.OK


def _id_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("campaign_id", metavar="ID", help="campaign id")


def _actor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor", help="name recorded in the audit log as cli:<name> (default: the OS user)"
    )


def configure_start(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--query",
        required=True,
        help='IoT Hub twin query selecting the devices, e.g. "SELECT * FROM devices WHERE '
        "tags.fleet = 'north'\"",
    )
    parser.add_argument(
        "--reason",
        default=Trigger.MANUAL.value,
        choices=[t.value for t in (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL)],
        help="the rotations' reason (default manual)",
    )
    parser.add_argument("--id", help="campaign id (default: <reason>-<time>-<random>)")
    parser.add_argument("--devices-expected", type=int, help="device count, for the ETA")
    parser.add_argument(
        "--abort-min-executed",
        type=int,
        default=100,
        help="devices with an outcome before the abort criteria apply (default 100)",
    )
    parser.add_argument(
        "--abort-failure-percentage",
        type=float,
        default=10.0,
        help="abort when this %% of the rotations failed (default 10)",
    )
    parser.add_argument(
        "--run", action="store_true", help="also run the first step here (not only queue it)"
    )
    _actor_arg(parser)
    json_arg(parser)


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

    start = sub.add_parser(
        "start",
        help="re-issue every device a twin query selects",
        description="Start a campaign: every device the query selects gets a new "
        "certificate, paced below Azure's limits; it runs from the work queue.",
    )
    configure_start(start)
    start.set_defaults(func=run_start)

    status = sub.add_parser("status", help="a campaign's state, progress and ETA")
    _id_arg(status)
    json_arg(status)
    status.set_defaults(func=run_status)

    listing = sub.add_parser("list", help="campaigns, newest first")
    listing.add_argument(
        "--state", action="append", choices=[s.value for s in CampaignState], default=[]
    )
    json_arg(listing)
    listing.set_defaults(func=run_list)

    pause = sub.add_parser("pause", help="stop enqueuing (rotations under way finish)")
    _id_arg(pause)
    pause.add_argument("--note", help="why")
    _actor_arg(pause)
    json_arg(pause)
    pause.set_defaults(func=run_pause)

    resume = sub.add_parser("resume", help="go on from the checkpoint")
    _id_arg(resume)
    _actor_arg(resume)
    json_arg(resume)
    resume.set_defaults(func=run_resume)

    abort = sub.add_parser("abort", help="end a campaign (final)")
    _id_arg(abort)
    abort.add_argument("--note", required=True, help="why")
    _actor_arg(abort)
    json_arg(abort)
    abort.set_defaults(func=run_abort)

    step = sub.add_parser("run", help="run one step now (what a campaign queue message does)")
    _id_arg(step)
    json_arg(step)
    step.set_defaults(func=run_step)


def run_campaign(args: argparse.Namespace) -> int:  # pragma: no cover - argparse routes
    raise InvalidRequestError(
        "campaign_action", "name an action: plan, start, status, list, pause, resume, abort, run"
    )


COMMANDS: tuple[Command, ...] = (
    Command("campaign", "fleet-wide re-roll campaigns", configure_campaign, run_campaign),
)
