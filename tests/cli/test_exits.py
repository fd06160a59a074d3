"""One error -> exit-code table, distinct codes, documented; one parser over an explicit
list of command modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli import exits
from cli.exits import ExitCode, exit_for
from cli.main import COMMAND_MODULES, build_parser, commands, main
from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    SigningError,
    ThrottledError,
)

REPO = Path(__file__).resolve().parents[2]


def test_exit_codes_are_distinct() -> None:
    assert len({int(code) for code in ExitCode}) == len(ExitCode.__members__)


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (InvalidRequestError("x_bad", "nope"), 2, "rejected: x_bad: nope"),
        (CsrRejectedError("subject_mismatch", "CN"), 2, "rejected: subject_mismatch: CN"),
        (DeviceDisallowedError("dev-1 is disallowed"), 2, "refused: dev-1 is disallowed"),
        (NotFoundError("no device"), 3, "not found: no device"),
        (ConflictError("a PKI exists"), 4, "conflict: a PKI exists"),
        (ConcurrencyError("changed"), 5, "conflict: changed; try again"),
        (ThrottledError("DPS 429", retry_after=3), 5, "throttled: DPS 429; try again in 3 s"),
        (ServiceError("hub 500", 500), 1, "failed: hub 500"),
        (SigningError("HSM gone"), 1, "failed: HSM gone"),
        (CertrollError("other"), 1, "failed: other"),
    ],
)
def test_each_error_has_one_exit_code(error: CertrollError, code: int, line: str) -> None:
    assert exit_for(error) == (code, line)


def test_conflict_and_try_again_differ() -> None:
    """A resource that exists is not a reason to retry."""
    assert exit_for(ConflictError("x"))[0] != exit_for(ConcurrencyError("x"))[0]
    assert exit_for(ConcurrencyError("x"))[0] == exit_for(ThrottledError("x"))[0]


@pytest.mark.parametrize("doc", ["docs/api.md", "README.md"])
def test_every_exit_code_is_documented(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    section = text[text.index("xit codes") :]
    for code in ExitCode:
        assert re.search(rf"(^\| {int(code)} \||\b{int(code)} [a-z])", section, re.M), (
            doc,
            code,
        )


def test_the_table_ends_with_the_base_error() -> None:
    assert exits.ERROR_EXITS[-1].error is CertrollError


def test_one_parser_over_the_listed_modules() -> None:
    names = [c.name for module in COMMAND_MODULES for c in module.COMMANDS]
    assert len(names) == len(set(names))
    assert set(commands()) == set(names) == {
        "pki", "issue", "revoke", "crl", "ca",
        "disallow", "allow", "renew", "status", "sweep", "campaign",
        "serve", "demo", "report", "token", "soak",
    }  # fmt: skip
    parser = build_parser()
    assert parser.parse_args(["status"]).func is commands()["status"].run


def test_usage_errors_and_no_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: certroll" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
