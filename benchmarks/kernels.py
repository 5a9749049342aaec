"""hpcyuan's C++/CUDA extension ops against their PyTorch references, measured in one run.

    .venv/bin/python benchmarks/kernels.py                 # every case, all cores (~10 min on 2 cores)
    .venv/bin/python benchmarks/kernels.py --threads 1 --quick    # one shape per op, fewer repeats
    .venv/bin/python benchmarks/kernels.py --device cuda   # on a GPU machine (benchmarks/gpu_check.sh runs it)

For each case (op, shape from the tiny/demo/yuan-2b/M32 configs, forward or forward+backward) it times
  extension    torch.ops.hpcyuan.<op> (kernels/, "not built" when hpcyuan._C lacks it)
  eager        the pure-PyTorch reference of hpcyuan/ops/reference.py
  compile      torch.compile of that reference (first calls, compilation included, are warm-up)
  optim        fused_adamw only: torch.optim.AdamW(foreach=True) stepping the same flat fp32 shard
  fused        fused_adamw on CUDA only: torch.optim.AdamW(fused=True), torch's own one-kernel AdamW
  conv2d       lfa_filter only: the model spec's formulation in eager PyTorch, as Yuan's Megatron code runs it
               (docs/model.md, "LFA"; Conv2d with kernel (2, 1) and padding (1, 0) on a [b, h, s, 1] view, the
               last row cropped, then the residual RMSNorm). hpcyuan's reference is already faster: it
               runs both taps of a conv as one matmul on the (B, T, C) activations, without transposes
  into         fused_adamw only: the extension's step into other buffers (fused_adamw_into, the step
               after a checkpoint's freeze); "x into" above 1 is what it costs over the in-place step
as the median of --repeats timings after --warmup calls, fp32 inputs unless the shape says bf16. On the CPU
a timing is one call, wall-clock. On CUDA it is CUDA events around a batch of calls (as many as fill ~2 ms,
at most 100) divided by the batch, so a call's launch and Python overhead count only where the GPU would
wait for them; CUDA also adds shapes large enough to measure bandwidth (data many times the GPU's L2).
Speed-ups are the peers' time over the extension's ("x eager" = eager time / extension time). GB/s
(memory-bound ops) counts the bytes the fused kernel must move at least; on CUDA it is also given as a
share of the device-to-device copy bandwidth measured at the start (bytes read + written) and of the
datasheet peak (--peak-gbs; known for the H200, 4,800 GB/s). TFLOP/s (lfa_filter) counts its six GEMMs'
FLOPs (forward 2, backward 4 of 2*N*C^2 each). The goals of the kernel issue are printed next to the
results: lfa_filter and attention_router >= 2x eager, fused AdamW >= 1.5x torch.optim.AdamW(foreach=True)
("optim"). fused_adamw runs without a param_out write-back, as torch.optim does.
Not a test: it prints, it does not assert. The machine should be otherwise idle: timings are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (OpenMP and torch); default: all")
    p.add_argument("--quick", action="store_true", help="one shape per op, fewer repeats")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--warmup", type=int, default=None, help="calls before timing (default 5, quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 20, quick 7)")
    p.add_argument("--ops", default=None, help="comma-separated ops to run (default: all)")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="the device's datasheet memory bandwidth in GB/s (default: known for the H200)")
    p.add_argument("--json", default=None, help="also write the results to this file (JSON lines, one per case)")
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads:  # before torch loads: the extension's OpenMP and torch share one libgomp
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hpcyuan import ops  # noqa: E402  (imports hpcyuan._C when built)
from hpcyuan.ops import reference  # noqa: E402

if ARGS.threads:
    torch.set_num_threads(ARGS.threads)
DEVICE = torch.device(ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu"))
CUDA = DEVICE.type == "cuda"
WARMUP = ARGS.warmup or (3 if ARGS.quick else 5)
REPEATS = ARGS.repeats or (7 if ARGS.quick else 20)
BATCH_S, MAX_BATCH = 2e-3, 100  # CUDA: calls per timing fill ~2 ms, at most 100
PEAK_GBS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "A100-SXM4-80GB": 2039.0}  # datasheets
PEERS = ("eager", "compile", "conv2d", "optim") + (("fused",) if CUDA else ()) + ("into",)
# one torch.compile per case re-traces the same reference functions for each shape, dtype and grad mode:
# above dynamo's default recompile limit (8 per function) it would silently run them eagerly
for _name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(256, getattr(torch._dynamo.config, _name)))
GOALS = {"lfa_filter": ("eager", 2.0), "attention_router": ("eager", 2.0), "fused_adamw": ("optim", 1.5)}
W = 10  # width of a number column
EPS = 1e-6


@dataclass
class Case:
    op: str  # name under torch.ops.hpcyuan
    shape: str  # which config the shape comes from, and the shape
    mode: str  # "fwd" or "fwd+bwd"
    make: Callable[[], dict[str, Callable[[], object]]]  # builds inputs; returns {"extension": fn, peer: fn}
    bytes_moved: int = 0  # minimal bytes per call of a fused kernel (memory-bound ops), 0: no GB/s
    flops: int = 0  # FLOPs per call (GEMM-bound ops), 0: no TFLOP/s


def _rand(*shape, grad=False, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, device=DEVICE, dtype=dtype) * scale).requires_grad_(grad)


def _size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _runner(fn, args, grad_of, grad_out):
    """A closure calling fn(*args) and, in fwd+bwd mode (grad_of given), torch.autograd.grad of its first
    output with respect to args[i] for i in grad_of."""
    if grad_of is None:
        return lambda: fn(*args)

    def run():
        out = fn(*args)
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out, [args[i] for i in grad_of], grad_out)
    return run


def _peers(op, ref, args, grad_of=None, grad_out=None):
    """extension / eager / compile closures for one op on one set of inputs."""
    ext = getattr(torch.ops.hpcyuan, op, None)  # None: not in this build of hpcyuan._C
    return {"extension": None if ext is None else _runner(ext, args, grad_of, grad_out),
            "eager": _runner(ref, args, grad_of, grad_out),
            "compile": _runner(torch.compile(ref, dynamic=False), args, grad_of, grad_out)}


def rms_norm_case(tokens, hidden, dtype=torch.float32, *, bwd):
    def make():
        x, w = _rand(tokens, hidden, grad=bwd, dtype=dtype), _rand(hidden, grad=bwd)  # fp32 weight, as the model's
        grad_of = (0, 1) if bwd else None
        return _peers("rms_norm", reference.reference_rms_norm, (x, w, EPS), grad_of,
                      _rand(tokens, hidden, dtype=dtype))
    numel = tokens * hidden  # fwd: read x, write y; bwd: read grad, x, write dx
    return make, numel * _size(dtype) * (5 if bwd else 2), 0


def conv2d_lfa_filter(x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps):
    """The LFA filter as Yuan's Megatron LocalizedFiltering computes it: (B, T, C) -> [B, C, T, 1], two
    Conv2d with kernel (2, 1) and padding (1, 0), each output's last row dropped (causal), then
    RMSNorm(y2 + x) in (B, T, C). Equal to reference_lfa_filter within fp32 rounding."""
    T = x.shape[1]
    y1 = F.conv2d(x.permute(0, 2, 1).unsqueeze(-1), conv1_weight.unsqueeze(-1), conv1_bias, padding=(1, 0))[:, :, :T]
    y2 = F.conv2d(y1, conv2_weight.unsqueeze(-1), conv2_bias, padding=(1, 0))[:, :, :T]
    return reference.reference_rms_norm(y2.squeeze(-1).permute(0, 2, 1) + x, norm_weight, eps)


def lfa_filter_case(B, T, C, dtype=torch.float32, *, bwd):
    def make():
        params = (_rand(C // 2, C, 2, scale=0.05, grad=bwd, dtype=dtype),
                  _rand(C // 2, scale=0.05, grad=bwd, dtype=dtype),
                  _rand(C, C // 2, 2, scale=0.05, grad=bwd, dtype=dtype), _rand(C, scale=0.05, grad=bwd, dtype=dtype),
                  _rand(C, grad=bwd))  # the norm weight stays fp32, as the model keeps it
        args = (_rand(B, T, C, grad=bwd, dtype=dtype), *params, EPS)
        grad_of = tuple(range(6)) if bwd else None
        grad_out = _rand(B, T, C, dtype=dtype)
        if dtype == torch.float32:  # the Conv2d peer computes the same function
            with torch.no_grad():
                torch.testing.assert_close(conv2d_lfa_filter(*args), reference.reference_lfa_filter(*args))
        return _peers("lfa_filter", reference.reference_lfa_filter, args, grad_of, grad_out) | {
            "conv2d": _runner(conv2d_lfa_filter, args, grad_of, grad_out)}
    return make, 0, 2 * B * T * C * C * (6 if bwd else 2)


def router_case(N, E, bwd, top_k=2):
    def make():
        args = (_rand(N, E, grad=bwd), _rand(N, E, grad=bwd), _rand(N, E, grad=bwd), top_k)
        grad_of = (0, 1, 2) if bwd else None
        return _peers("attention_router", reference.reference_attention_router, args, grad_of, _rand(N, top_k))
    return make, 0, 0


def fused_adamw_case(n):
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def make():
        state = (_rand(n), torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE), _rand(n))  # + grad
        kw = dict(hp, step=10, grad_scale=1.0)
        ext = getattr(torch.ops.hpcyuan, "fused_adamw", None)
        ext_into = getattr(torch.ops.hpcyuan, "fused_adamw_into", None)
        spare = tuple(torch.zeros(n, device=DEVICE) for _ in range(3))
        compiled = torch.compile(reference.reference_fused_adamw_, dynamic=False)
        param = torch.nn.Parameter(_rand(n))
        param.grad = _rand(n)
        opt = torch.optim.AdamW([param], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                weight_decay=hp["weight_decay"], foreach=True)
        fns = {"extension": None if ext is None else (lambda: ext(*state, None, *kw.values())),
               "eager": lambda: reference.reference_fused_adamw_(*state, None, **kw),
               "compile": lambda: compiled(*state, None, **kw),
               "optim": opt.step,
               "into": None if ext_into is None else (lambda: ext_into(*state, *spare, None, *kw.values()))}
        if CUDA:  # torch's own fused CUDA AdamW, on a parameter of its own
            fused_param = torch.nn.Parameter(_rand(n))
            fused_param.grad = _rand(n)
            fused = torch.optim.AdamW([fused_param], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                      weight_decay=hp["weight_decay"], fused=True)
            fns["fused"] = fused.step
        return fns
    return make, n * 4 * 7, 0  # read master, exp_avg, exp_avg_sq, grad; write the first three


def cases(quick: bool) -> list[Case]:
    """(config, shape) per op: demo = hidden 256, 8 x 128 tokens; yuan-2b = hidden 2048; M32 = 32 experts.
    On CUDA (not --quick) also shapes whose data is many times the GPU's L2 (bandwidth), and bf16."""
    out = []
    bf16 = torch.bfloat16
    big = CUDA and not quick
    norm = [("demo 1024x256", 1024, 256)] + ([] if quick else [("yuan-2b 4096x2048", 4096, 2048)])
    norm += [("64Kx4096", 65536, 4096), ("64Kx4096 bf16", 65536, 4096, bf16)] if big else []
    lfa = [("demo 8x128x256", 8, 128, 256)] + ([] if quick else [("yuan-2b 1x1024x2048", 1, 1024, 2048)])
    lfa += [("yuan-2b 4x4096x2048", 4, 4096, 2048), ("yuan-2b 4x4096x2048 bf16", 4, 4096, 2048, bf16)] if big else []
    router = [("M32 4096x32", 4096, 32)] if quick else [("E=8 4096x8", 4096, 8), ("M32 4096x32", 4096, 32),
                                                        ("M32 16384x32", 16384, 32)]
    router += [("M32 262144x32", 262144, 32)] if big else []
    for bwd in (False, True):
        mode = "fwd+bwd" if bwd else "fwd"
        out += [Case("rms_norm", s, mode, *rms_norm_case(*a, bwd=bwd)) for s, *a in norm]
        out += [Case("lfa_filter", s, mode, *lfa_filter_case(*a, bwd=bwd)) for s, *a in lfa]
        out += [Case("attention_router", s, mode, *router_case(*a, bwd=bwd)) for s, *a in router]
    sizes = [4 << 20] if quick else [16 << 20] + ([256 << 20] if big else [])
    adamw = [Case("fused_adamw", f"flat shard {n >> 20}M", "step", *fused_adamw_case(n)) for n in sizes]
    out = adamw + out if CUDA else out + adamw  # on CUDA first: the one cheap to compile, if time runs short
    if ARGS.ops:
        wanted = set(ARGS.ops.split(","))
        out = [c for c in out if c.op in wanted]
    return out


def timed(fn: Callable[[], object]) -> float:
    """Seconds per call: on the CPU the median wall time of REPEATS calls after WARMUP calls; on CUDA the
    median over REPEATS batches of CUDA-event time per call, a batch being as many calls as fill BATCH_S."""
    if CUDA:
        return _timed_cuda(fn)
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _timed_cuda(fn: Callable[[], object]) -> float:
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    batch = max(1, min(MAX_BATCH, math.ceil(BATCH_S / max(time.perf_counter() - start, 1e-7))))
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPEATS):
        begin.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3 / batch)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB on CUDA, bytes read + written per second (the practical ceiling)."""
    n = 1 << 28  # fp32 elements
    a, b = torch.empty(n, device=DEVICE), torch.empty(n, device=DEVICE)
    a.normal_()
    seconds = timed(lambda: b.copy_(a))
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 4 / seconds


def measure(case: Case) -> dict[str, float | str]:
    """{impl: seconds, or a short reason it has no time}"""
    fns = case.make()
    result: dict[str, float | str] = {}
    for impl, fn in fns.items():
        if fn is None:
            result[impl] = "not built"
            continue
        try:
            result[impl] = timed(fn)
        except Exception as e:  # e.g. torch.compile without a working C++ compiler: report, go on
            result[impl] = f"error: {type(e).__name__}"
            print(f"  {case.op} {case.shape} {case.mode} {impl}: {type(e).__name__}: {e}", file=sys.stderr)
    return result


def _ms(t):
    return f"{t * 1e3:{W}.3f}" if isinstance(t, float) else f"{(t or '-')[:W]:>{W}}"


COPY_GBS: float | None = None  # measured at the start on CUDA
PEAK: float | None = None


def row(case: Case, res: dict) -> str:
    ext = res.get("extension")
    ok = isinstance(ext, float)
    cols = [f"{case.op:<17}{case.shape:<26}{case.mode:<8}", _ms(ext)] + [_ms(res.get(p)) for p in PEERS]
    cols += [f"{res[p] / ext:{W - 1}.2f}x" if ok and isinstance(res.get(p), float) else f"{'-':>{W}}"
             for p in PEERS]
    gbs = case.bytes_moved / ext / 1e9 if ok and case.bytes_moved else None
    cols.append(f"{gbs:{W}.1f}" if gbs else f"{'-':>{W}}")
    if CUDA:
        cols.append(f"{100 * gbs / COPY_GBS:{W - 1}.0f}%" if gbs and COPY_GBS else f"{'-':>{W}}")
        cols.append(f"{100 * gbs / PEAK:{W - 1}.0f}%" if gbs and PEAK else f"{'-':>{W}}")
    cols.append(f"{case.flops / ext / 1e12:{W}.2f}" if ok and case.flops else f"{'-':>{W}}")
    goal = GOALS.get(case.op)
    if goal and ok and isinstance(res.get(goal[0]), float):
        ratio = res[goal[0]] / ext
        cols.append(f"  >= {goal[1]}x {goal[0]}: {'met' if ratio >= goal[1] else 'NOT met'}")
    return " ".join(cols)


def main() -> None:
    global COPY_GBS, PEAK
    built = sorted(ops.extension_ops()) or ["none"]
    print(f"torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, extension ops: {', '.join(built)}")
    if CUDA:
        name = torch.cuda.get_device_name(DEVICE)
        props = torch.cuda.get_device_properties(DEVICE)
        PEAK = ARGS.peak_gbs or next((v for k, v in PEAK_GBS.items() if k in name), None)
        COPY_GBS = copy_bandwidth() / 1e9
        print(f"GPU {name}: {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, CUDA "
              f"{torch.version.cuda}; device-to-device copy {COPY_GBS:,.0f} GB/s (1 GiB, read + write), datasheet "
              f"peak {f'{PEAK:,.0f} GB/s' if PEAK else 'unknown (--peak-gbs)'}; TF32 for fp32 matmuls: "
              f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
        print(f"median of {REPEATS} CUDA-event timings after {WARMUP} warm-up calls, each timing a batch of calls "
              f"filling ~{BATCH_S * 1e3:.0f} ms (at most {MAX_BATCH}); times in ms per call; "
              "speed-up = peer / extension")
    else:
        print(f"median of {REPEATS} calls after {WARMUP} warm-up calls; times in ms; speed-up = peer / extension")
    rates = [f"{'GB/s':>{W}}"] + ([f"{'% copy':>{W}}", f"{'% peak':>{W}}"] if CUDA else []) + [f"{'TFLOP/s':>{W}}"]
    head = " ".join([f"{'op':<17}{'shape':<26}{'mode':<8}", f"{'ext ms':>{W}}"] + [f"{p + ' ms':>{W}}" for p in PEERS]
                    + [f"{'x ' + p:>{W}}" for p in PEERS] + rates + [" goal"])
    print(head)
    print("-" * len(head))
    out = open(ARGS.json, "w") if ARGS.json else None
    for case in cases(ARGS.quick):
        res = measure(case)
        print(row(case, res), flush=True)
        if out:
            ext = res.get("extension")
            record = {"op": case.op, "shape": case.shape, "mode": case.mode, "device": str(DEVICE),
                      "ms": {k: v * 1e3 if isinstance(v, float) else v for k, v in res.items()},
                      "gbs": case.bytes_moved / ext / 1e9 if case.bytes_moved and isinstance(ext, float) else None,
                      "tflops": case.flops / ext / 1e12 if case.flops and isinstance(ext, float) else None,
                      "copy_gbs": COPY_GBS, "peak_gbs": PEAK}
            out.write(json.dumps(record) + "\n")
            out.flush()
        if CUDA:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
