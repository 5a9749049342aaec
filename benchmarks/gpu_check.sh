#!/usr/bin/env bash
# The kernels' GPU check, in one go on a machine with an NVIDIA GPU, nvcc and a CUDA build of torch (issue #5):
#
#   bash benchmarks/gpu_check.sh        # from anywhere; logs to $OUT (default runs/gpu_check/)
#
#   0. the machine: nvidia-smi, torch and nvcc versions              -> $OUT/machine.log
#   1. builds hpcyuan._C in place with its CUDA kernels              -> $OUT/build.log
#      (python3 setup.py build_ext --inplace; TORCH_CUDA_ARCH_LIST defaults to the visible GPU's arch,
#      MAX_JOBS to the core count), checks that every op has a CUDA kernel registered, and that a C++ error
#      from the extension (a TORCH_CHECK, on the CPU and on the GPU) raises RuntimeError in Python rather
#      than crashing the process. The compilers are torch's choice: CXX for the C++ files, CC (nvcc's -ccbin)
#      for the CUDA ones. If the error check crashes and /usr/bin/g++ is another compiler, the extension is
#      rebuilt once with CC=/usr/bin/gcc CXX=/usr/bin/g++ and checked again (GPU_CHECK_NO_FALLBACK=1: not).
#      Why: on the GPU machines lent to this project (2026-12), CXX=/opt/gcc/bin/g++ is a wrapper that (by a
#      backtrace) links libstdc++'s code into the extension; its std::ostream then segfaults formatting the
#      first TORCH_CHECK message (cuda-gdb: std::ostream::_M_insert<long> inside _C.so); Ubuntu's g++ 13.3 works.
#      GPU_CHECK_GDB=1 adds a cuda-gdb backtrace of such a crash.
#   2. the kernel tests (tests/kernels) with the GPU visible; fails if a CUDA test was skipped
#                                                                    -> $OUT/tests.log, $OUT/tests.xml
#   3. benchmarks/kernels.py --device cuda (GB/s against the measured copy bandwidth and the datasheet peak;
#      GPU_CHECK_BENCH=0 skips it, GPU_CHECK_BENCH_ARGS adds arguments, e.g. "--ops rms_norm", and the
#      tests leave it GPU_CHECK_BENCH_RESERVE seconds of the budget, default 120)
#                                                                    -> $OUT/bench.log, $OUT/bench.jsonl
# Each stage runs under a timeout that keeps the whole script within GPU_CHECK_BUDGET seconds (default 450),
# and every log is written as it goes (tee), so a stopped run still leaves what it did. Uses no network and
# installs nothing: python3 (PYTHON) must already have torch, numpy and pytest (+ pytest-xdist, pytest-timeout).
# Exit status: 0 when every stage succeeded, else the first failing stage's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-450}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$SECONDS
status=0
say() { printf '[gpu_check %s +%ds] %s\n' "$(date +%T)" $((SECONDS - T0)) "$*"; }
left() { echo $((BUDGET - (SECONDS - T0))); }  # seconds of the budget left
fail() { say "FAILED: $*"; [ "$status" -ne 0 ] || status=$1; }
if ! command -v nvcc >/dev/null && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
fi

# 0. the machine
{
    say "machine: $(uname -srm), $(nproc) cores"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv || true
    nvidia-smi || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| GPU:',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible')"
    nvcc --version | tail -n 2 || true
    "$PY" -m pytest --version
} 2>&1 | tee "$OUT/machine.log"

# 1. build in place (the .so lands in hpcyuan/; PYTHONPATH above makes it importable without installing)
build() {  # the build; returns its exit status
    say "build: python3 setup.py build_ext --inplace (CC=${CC:-default} CXX=${CXX:-default}," \
        "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<visible GPU>})" | tee -a "$OUT/build.log"
    rm -rf build hpcyuan/_C*.so
    local start=$SECONDS rc
    MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout 240 "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1
    rc=$?
    grep -E "error|Error" "$OUT/build.log" | tail -n 15
    say "build: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/build.log"
    return $rc
}

check_cuda_ops() {  # every op has a CUDA kernel, and one runs
    "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/build.log"
import torch
from hpcyuan import ops
ext = sorted(ops.extension_ops())
print("extension ops:", ", ".join(ext) or "none")
ops_cuda = {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"hpcyuan::{op}", "CUDA")
            for op in ("rms_norm", "rms_norm_backward", "lfa_filter_forward", "lfa_filter_backward",
                       "attention_router", "attention_router_backward", "fused_adamw")}
print("CUDA kernels registered:", ops_cuda)
assert all(ops_cuda.values()), "some ops have no CUDA kernel: the extension was built without CUDA"
x = torch.randn(4, 8, device="cuda")
y = torch.ops.hpcyuan.rms_norm(x, torch.ones(8, device="cuda"), 1e-6)
torch.cuda.synchronize()
print("smoke test: rms_norm on", y.device, "ok")
EOF
}

must_raise() {  # $1: a Python statement that must raise RuntimeError
    "$PY" -c "import torch, hpcyuan.ops
try:
    $1
except RuntimeError as e:
    print('  raised RuntimeError:', str(e).splitlines()[0][:90])
else:
    raise SystemExit('  no error raised')"
}

check_errors() {  # C++ errors raise, not crash: torch's own, then the extension's on the CPU and the GPU
    local bad='torch.ops.hpcyuan.attention_router(*(torch.randn(4, 8, device=DEV) for _ in range(3)), 9)' what rc
    crash="" crash_rc=0
    for what in "torch.mm(torch.randn(2, 3), torch.randn(4, 5))" "${bad//DEV/\"cpu\"}" "${bad//DEV/\"cuda\"}"; do
        must_raise "$what" 2>&1 | tee -a "$OUT/build.log"
        rc=${PIPESTATUS[0]}
        say "C++ error check: exit $rc for: $what" | tee -a "$OUT/build.log"
        [ $rc -eq 0 ] || { [ -n "$crash" ] || { crash=$what; crash_rc=$rc; }; }
    done
    [ -z "$crash" ] && return 0
    {
        say "C++ error check FAILED (exit $crash_rc): $crash"
        "${CXX:-c++}" --version | head -n 1
        if command -v readelf >/dev/null; then
            echo "hpcyuan._C needs: $(readelf -d hpcyuan/_C*.so | grep -o 'NEEDED.*' | grep -o '\[.*\]' | tr '\n' ' ')"
        fi
        "$PY" -c "import torch, hpcyuan._C
print('C++ runtime libraries loaded:', *sorted({l.split()[-1] for l in open('/proc/self/maps')
      if any(k in l for k in ('libstdc++', 'libgcc_s', 'libgomp'))}), sep='\n  ')"
        if [ "${GPU_CHECK_GDB:-0}" = 1 ] && command -v cuda-gdb >/dev/null; then
            say "native backtrace (cuda-gdb) of: $crash"
            timeout 60 cuda-gdb -q -batch -ex run -ex bt --args "$PY" -c "import torch, hpcyuan.ops; $crash" 2>&1 \
                | grep -E "^#|signal|SIG" | head -n 30
        fi
    } 2>&1 | tee -a "$OUT/build.log"
    return 1
}

: >"$OUT/build.log"
built=0 crash=""
if build; then
    if check_cuda_ops; then
        built=1
        check_errors
        if [ -n "$crash" ] && [ -z "${GPU_CHECK_NO_FALLBACK:-}" ] && [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ] \
            && [ "$(command -v "${CXX:-c++}")" != /usr/bin/g++ ]; then
            say "rebuilding with the system compiler: CC=/usr/bin/gcc CXX=/usr/bin/g++" | tee -a "$OUT/build.log"
            export CC=/usr/bin/gcc CXX=/usr/bin/g++
            built=0
            if build; then
                if check_cuda_ops; then built=1; check_errors; else fail 1 "the extension has no CUDA kernels"; fi
            else
                fail 1 "the build with the system compiler (see $OUT/build.log)"
            fi
        fi
        [ -z "$crash" ] || fail "$crash_rc" "a C++ error from the extension did not raise RuntimeError: $crash"
    else
        fail 1 "the extension has no CUDA kernels"
    fi
else
    fail 1 "the build (see $OUT/build.log)"
fi

# 2. the kernel tests, GPU visible (pytest-xdist: 12 workers, each with its own CUDA context)
if [ "$built" -eq 1 ]; then
    keep=$([ "${GPU_CHECK_BENCH:-1}" != 0 ] && echo "${GPU_CHECK_BENCH_RESERVE:-120}" || echo 0)  # for the bench
    t=$(( $(left) - keep < 240 ? $(left) - keep : 240 ))
    t=$(( t < 30 ? 30 : t ))
    say "tests: pytest -m kernels tests/kernels (timeout ${t} s)" | tee "$OUT/tests.log"
    start=$SECONDS
    timeout "$t" "$PY" -m pytest -m kernels tests/kernels -q -p no:cacheprovider -n 12 -rfEs \
        --junitxml="$OUT/tests.xml" 2>&1 | tee -a "$OUT/tests.log"
    rc=$?
    say "tests: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/tests.log"
    [ $rc -eq 0 ] || fail $rc "the kernel tests"
    if grep -q "no CUDA device" "$OUT/tests.log"; then
        fail 1 "CUDA tests were skipped although this is the GPU check"
    fi
fi

# 3. the benchmark (whatever the tests said: failures are reported above; figures of a failing op are void)
if [ "${GPU_CHECK_BENCH:-1}" != 0 ] && [ "$built" -eq 1 ]; then
    t=$(( $(left) - 5 ))
    say "bench: benchmarks/kernels.py --device cuda ${GPU_CHECK_BENCH_ARGS:-}(timeout ${t} s)" | tee "$OUT/bench.log"
    start=$SECONDS
    # shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS: words
    timeout "$t" "$PY" benchmarks/kernels.py --device cuda --json "$OUT/bench.jsonl" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 \
        | tee -a "$OUT/bench.log"
    rc=$?
    say "bench: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/bench.log"
    [ $rc -eq 0 ] || fail $rc "the benchmark"
fi
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 | tee -a "$OUT/machine.log"
say "done: exit $status; logs in $OUT/"
exit "$status"
