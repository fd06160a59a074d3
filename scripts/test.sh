#!/usr/bin/env bash
# Lint, type-check and run the whole test suite with Azurite up for the tests that need it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/mypy"
started=0
if ! scripts/azurite.sh status >/dev/null 2>&1 && ! (echo >/dev/tcp/127.0.0.1/10002) 2>/dev/null; then
  scripts/azurite.sh start; started=1
fi
trap '[[ $started == 1 ]] && scripts/azurite.sh stop' EXIT
set +e
"$venv/bin/pytest" --cov --cov-report=term:skip-covered "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
