"""Run the benchmark sections and write docs/benchmarks.md and docs/benchmarks.json.

    python -m bench                 # every section
    python -m bench issuance e2e    # only these (other rows are kept from the last run)

Every figure of one section is measured in the same run, so ratios within a section
compare like with like on this machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import BenchRow

SECTIONS = ("issuance", "emulator_query", "storage_calls", "e2e", "campaign")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _machine() -> str:
    import os

    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    json_path = DOCS / "benchmarks.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    sections: dict[str, dict[str, object]] = previous.get("sections", {})
    for name in args.sections or SECTIONS:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        rows: list[BenchRow] = module.run()
        sections[name] = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": _machine(),
            "rows": [row.__dict__ for row in rows],
        }
        for row in rows:
            print(f"   {row.key} = {row.value:.4g} {row.unit}", file=sys.stderr, flush=True)
    flat = {
        row["key"]: row["value"]
        for section in sections.values()
        for row in section["rows"]  # type: ignore[attr-defined]
    }
    DOCS.mkdir(exist_ok=True)
    json_path.write_text(json.dumps({**flat, "sections": sections}, indent=2) + "\n")
    (DOCS / "benchmarks.md").write_text(_markdown(sections))
    print(f"wrote {json_path} and {DOCS / 'benchmarks.md'}", file=sys.stderr)
    return 0


def _markdown(sections: dict[str, dict[str, object]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`). Each section's figures come from one run",
        "on the machine named in its heading; compare ratios within a section, not across",
        "machines. Machine-readable copy: `benchmarks.json` (one key per figure).",
        "",
    ]
    for name, section in sections.items():
        lines += [
            f"## {name}",
            "",
            f"Measured {section['measured_at']} on {section['machine']} "
            f"({section['seconds']} s).",
            "",
            "| key | value | unit | what | target |",
            "|---|---:|---|---|---|",
        ]
        for row in section["rows"]:  # type: ignore[attr-defined]
            lines.append(
                f"| `{row['key']}` | {row['value']:.4g} | {row['unit']} | {row['description']} "
                f"| {row['target']} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
