"""Kill rate per module from a ``mutmut run`` (reads mutants/**/*.py.meta).

    python scripts/mutation_report.py [--markdown] [--total=DIR/]  # one row for DIR/
    python scripts/mutation_report.py --sample PREFIX N SEED   # names of a random sample
    python scripts/mutation_report.py --reset-survivors PREFIX # run them again next time

mutmut keeps a verdict until the mutated function changes; after tests were added,
``--reset-survivors`` makes the next ``mutmut run`` try the survivors against them.

A mutant is killed when its tests failed (exit code 1), timed out or crashed; it
survives when they passed (exit code 0) or when no test calls its function (mutmut's
"no tests", 33); it is not counted when it was not run.
A surviving mutant named in ``scripts/mutation_equivalents.txt`` (one name a line, then
``#`` and why no test can tell it from the original) is counted as equivalent: the kill
rate is given over all mutants run and over those that are not equivalent.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

KILLED = {1, 3, -24, 36, 152}  # tests failed, timeout, killed by signal, type-check
SURVIVED = {0, 5, 33}  # tests passed, no test ran, or no test calls the function
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.txt")


def equivalents(path: Path = EQUIVALENTS) -> set[str]:
    """The mutant names listed in ``path`` (text after ``#`` is the reason)."""
    if not path.exists():
        return set()
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {name for name in names if name}


def sample(prefix: str, count: int, seed: int) -> list[str]:
    """``count`` mutant names under module ``prefix``, drawn at random from ``seed``
    (sorted names, so the same tree and seed always give the same sample)."""
    names: list[str] = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    pool = sorted(n for n in names if n.startswith(prefix))
    return sorted(random.Random(seed).sample(pool, min(count, len(pool))))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--reset-survivors"]:
        known = equivalents()  # an equivalent mutant survives any test: not run again
        for meta in sorted(Path("mutants").rglob("*.py.meta")):
            data = json.loads(meta.read_text())
            codes = data["exit_code_by_key"]
            for name, code in codes.items():
                if code in SURVIVED and name.startswith(argv[1]) and name not in known:
                    codes[name] = None
            meta.write_text(json.dumps(data))
        return 0
    if argv[:1] == ["--sample"]:
        print("\n".join(sample(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    root = Path("mutants")
    known = equivalents()
    rows = []
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        ran = {name: c for name, c in codes.items() if c is not None}
        killed = sum(1 for c in ran.values() if c not in SURVIVED)
        equivalent = sum(1 for n, c in ran.items() if c in SURVIVED and n in known)
        module = str(meta.relative_to(root)).removesuffix(".meta")
        rows.append((module, len(codes), len(ran), killed, equivalent))
    for package in [a.removeprefix("--total=") for a in argv if a.startswith("--total=")]:
        inside = [r for r in rows if r[0].startswith(package)]
        rows = [r for r in rows if not r[0].startswith(package)]
        rows.append(
            (
                f"{package} (all modules)",
                *(sum(r[i] for r in inside) for i in range(1, 5)),  # type: ignore[misc]
            )
        )
    rows = [r for r in rows if r[2]]  # modules with no mutant run are not shown
    markdown = "--markdown" in argv
    if markdown:
        print(
            "| module | mutants | run | killed | equivalent | kill rate | "
            "kill rate without equivalents |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module, total, ran, killed, equivalent in rows:
        rate = 100.0 * killed / ran
        net = 100.0 * killed / (ran - equivalent) if ran > equivalent else 100.0
        if markdown:
            print(
                f"| `{module}` | {total} | {ran} | {killed} | {equivalent} | {rate:.1f} % "
                f"| {net:.1f} % |"
            )
        else:
            print(
                f"{module:45} {total:5} {ran:5} {killed:5} {equivalent:4} "
                f"{rate:6.1f} % {net:6.1f} %"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
