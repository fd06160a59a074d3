"""``certroll soak``: rotate a simulated fleet through the local stack while faults are
injected at every port, then check that nothing was lost (docs/reliability.md, "Soak")."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from cli.common import Command
from cli.exits import ExitCode
from shared.settings import Settings


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault plan (default 7)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--dump",
        metavar="FILE",
        default=None,
        help="write the end state of each device failing an invariant (ledger rows, rotation "
        "record, slots, hub identity, audit entries, the device's timeline) to FILE as JSON",
    )
    parser.add_argument(
        "--key-backend",
        choices=("pkcs11", "file"),
        default=None,
        help="issuing key backend for a new soak PKI (default: pkcs11 on SoftHSM2 "
        "when installed, else file)",
    )


def _run(args: argparse.Namespace) -> int:
    from cli.localstack import demo_home
    from local.soak import SoakOptions, run_soak

    settings = Settings.from_env()
    home = demo_home(settings).parent / "soak"
    settings = Settings({**settings.values, "CERTROLL_HOME": str(home)})
    options = SoakOptions(devices=args.devices, seed=args.seed, key_backend=args.key_backend)

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    # a SIGTERM ends the run through its clean-up (the soak's own Azurite is stopped)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))
    result = run_soak(settings, options, say=say)
    summary = result.summary
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as out:
            json.dump(result.evidence, out, indent=2, sort_keys=True)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for key in (
            "devices",
            "rotations_completed",
            "lost",
            "double_issuances",
            "max_gap_seconds",
            "elapsed_seconds",
        ):
            print(f"{key}: {summary[key]}")
        print("faults_injected:")
        for kind, count in summary["faults_injected"].items():
            print(f"  {kind}: {count}")
        for inv in summary["invariants"]:
            mark = "ok  " if inv["ok"] else "FAIL"
            print(f"{mark} {inv['name']}" + (f": {inv['detail']}" if inv["detail"] else ""))
    return ExitCode.OK if result.ok else ExitCode.FAILED


COMMANDS = (
    Command(
        "soak",
        "rotate a simulated fleet while faults strike at every port; check nothing is lost",
        _configure,
        _run,
    ),
)
