#!/usr/bin/env bash
# Install everything and run the whole test suite, tier by tier (what CI runs: .ci/run).
#
#   bash tests/run.sh            # all tiers
#   bash tests/run.sh -k config  # extra arguments go to every pytest call
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two pytest workers share the 2 cores

# Unit tests: two workers, one per core.
.venv/bin/python -m pytest -n 2 --dist loadfile -m unit "$@"
