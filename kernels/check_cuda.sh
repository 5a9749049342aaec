#!/usr/bin/env bash
# Compile-check the CUDA kernels with nvcc, no GPU needed (CI runs this; ~5 s per pure-CUDA file and arch
# pair, ~25 s per torch glue file).
#
#   bash kernels/check_cuda.sh            # from the repository root; PYTHON defaults to .venv/bin/python
#
# - kernels/cuda/*_kernel.cu are pure CUDA (C-style launchers in *_kernel.h): always compiled, for sm_80
#   and sm_90, with the flags torch's build adds to every .cu file (torch.utils.cpp_extension's
#   COMMON_NVCC_FLAGS: no implicit half/bf16 conversions, --expt-relaxed-constexpr) and the C++ standard
#   it builds with. A compile error fails the script.
# - the torch glue (the other kernels/cuda/*.cu: TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m)) needs torch's c10/cuda
#   headers. The CPU wheel ships them all but one generated file, c10/cuda/impl/cuda_cmake_macros.h (one
#   #define); there a stand-in for it is written to a temporary include folder and the glue is compiled
#   against the CPU wheel's headers (sm_90 only; it checks the host-side glue, not a link). With a CUDA
#   build of torch the real header is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC="$CUDA_HOME/bin/nvcc"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

say() { printf '[check_cuda] %s\n' "$*"; }
say "$("$NVCC" --version | tail -n 2 | head -n 1)"

# torch's nvcc flags and C++ standard (c++17 up to torch 2.9, c++20 from 2.10)
mapfile -t TORCH_FLAGS < <("$PYTHON" - <<'EOF'
import inspect
from torch.utils import cpp_extension as c
print("\n".join(c.COMMON_NVCC_FLAGS))
print("-std=c++20" if "-std=c++20" in inspect.getsource(c) else "-std=c++17")
EOF
)
ARCH=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
FLAGS=(-c -O3 -Xcompiler -fPIC "${TORCH_FLAGS[@]}")
say "flags: ${TORCH_FLAGS[*]}"

for f in kernels/cuda/*_kernel.cu; do
    start=$SECONDS
    "$NVCC" "${FLAGS[@]}" "${ARCH[@]}" "$f" -o "$OUT/$(basename "$f").o"
    say "ok   $f (sm_80, sm_90; $((SECONDS - start)) s)"
done

mapfile -t INCS < <("$PYTHON" -c \
    "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
PYINC=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
ABI=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
how="torch's CUDA headers"
if [ ! -f "${INCS[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
    mkdir -p "$OUT/stub/c10/cuda/impl"
    printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$OUT/stub/c10/cuda/impl/cuda_cmake_macros.h"
    INCS=("$OUT/stub" "${INCS[@]}")
    how="CPU torch $("$PYTHON" -c 'import torch; print(torch.__version__)') headers + a stand-in cuda_cmake_macros.h"
fi
for f in kernels/cuda/*.cu; do
    case "$f" in *_kernel.cu) continue ;; esac
    start=$SECONDS
    "$NVCC" "${FLAGS[@]}" -gencode arch=compute_90,code=sm_90 "${INCS[@]/#/-I}" "-I$PYINC" -Ikernels/cuda \
        -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DTORCH_EXTENSION_NAME=_C "$f" -o "$OUT/$(basename "$f").o"
    say "ok   $f (torch glue, sm_90, $how; $((SECONDS - start)) s)"
done
