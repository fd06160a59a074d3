#!/usr/bin/env bash
# make mutation: mutmut over the PKI, parsing and rotation modules ([tool.mutmut] in
# pyproject.toml), fast tests only, then the kill rate per module (docs/reliability.md).
#
#   MUTATION_ROTATION_SAMPLE=all|N  rotation mutants run: all, or N drawn at random
#                                    (default 200) with MUTATION_SEED (default 20)
#   MUTATION_JOBS                    parallel mutants (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
jobs="${MUTATION_JOBS:-2}"
sample="${MUTATION_ROTATION_SAMPLE:-200}"
seed="${MUTATION_SEED:-20}"
export HYPOTHESIS_PROFILE=mutation
mutmut() { nice -n 10 "$venv/bin/mutmut" run --max-children "$jobs" "$@"; }
"$venv/bin/python" scripts/mutation_report.py --reset-survivors shared. 2>/dev/null || true
"$venv/bin/python" scripts/mutation_report.py --reset-survivors functions. 2>/dev/null || true
mutmut "shared.pki.csr_policy*" "shared.pki.issuer*" "shared.pki.profile*" \
  "shared.domain.commands*" "functions.parsing*"
if [[ $sample == all ]]; then
  mutmut "shared.domain.rotation*"
else
  mapfile -t names < <("$venv/bin/python" scripts/mutation_report.py \
    --sample shared.domain.rotation. "$sample" "$seed")
  mutmut "${names[@]}"
fi
"$venv/bin/python" scripts/mutation_report.py --total=shared/domain/rotation/
