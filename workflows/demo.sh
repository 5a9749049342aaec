#!/usr/bin/env bash
# The main job, from a fresh clone: install, build the Shakespeare token files offline, train the
# `demo` Yuan 2.0 model on 4 MPI ranks (a 2-stage 1F1B pipeline x 2 data-parallel replicas, ZeRO-1)
# on this machine's CPUs, and compare its validation loss with the corpus' unigram entropy. A few
# minutes on 2 cores.
#
#   bash workflows/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
.venv/bin/hpcyuan data prepare --config demo
.venv/bin/hpcyuan launch -n 4 -- train --config demo "$@"
