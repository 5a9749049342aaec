#!/usr/bin/env bash
# Install everything and run the whole test suite, tier by tier (what CI runs: .ci/run).
#
#   bash tests/run.sh            # all tiers
#   bash tests/run.sh -k config  # extra arguments go to every pytest call
#
# Tiers (the directory sets the marker): unit (single process, two pytest workers, one per core),
# kernels (the C++ extension against its pure-PyTorch references, plus an nvcc compile-check of the
# CUDA sources when nvcc is present), mpi (real ranks under mpiexec; each test launches its own
# ranks, so no pytest workers), slurm (against a real local Slurm cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two pytest workers (or MPI ranks) share the 2 cores

.venv/bin/python -m pytest -n 2 --dist loadfile -m unit --durations=10 "$@"
.venv/bin/python -m pytest -n 2 --dist loadfile -m kernels "$@"
if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    bash kernels/check_cuda.sh
else
    echo "[tests] no nvcc at ${CUDA_HOME:-/usr/local/cuda}/bin: CUDA compile-check skipped"
fi
.venv/bin/python -m pytest -m mpi --durations=5 "$@"
# A real Slurm on this machine (slurm/local/: installed with apt and started by the tests' fixture,
# needs root); no pytest workers: the tests share the cluster's 4 nodes.
.venv/bin/python -m pytest -m slurm -p no:xdist --durations=5 "$@"
