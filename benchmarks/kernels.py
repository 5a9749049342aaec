"""hpcyuan's C++/CUDA extension ops against their PyTorch references, measured in one run.

    .venv/bin/python benchmarks/kernels.py                 # every case, all cores (~10 min on 2 cores)
    .venv/bin/python benchmarks/kernels.py --threads 1 --quick    # one shape per op, fewer repeats
    .venv/bin/python benchmarks/kernels.py --device cuda   # on a GPU machine (fp32, as on CPU)

For each case (op, shape from the tiny/demo/yuan-2b/M32 configs, forward or forward+backward) it times
  extension    torch.ops.hpcyuan.<op> (kernels/, "not built" when hpcyuan._C lacks it)
  eager        the pure-PyTorch reference of hpcyuan/ops/reference.py
  compile      torch.compile of that reference (first calls, compilation included, are warm-up)
  optim        fused_adamw only: torch.optim.AdamW(foreach=True) stepping the same flat fp32 shard
as the median of --repeats calls after --warmup calls, fp32 inputs. Speed-ups are the peers' time over
the extension's ("x eager" = eager time / extension time); GB/s (memory-bound ops) counts the bytes the
fused kernel must move at least. The goals of the kernel issue are printed next to the results: lfa_filter
and attention_router >= 2x eager, fused AdamW >= 1.5x torch.optim.AdamW(foreach=True) ("optim").
fused_adamw runs without a param_out write-back, as torch.optim does.
Not a test: it prints, it does not assert. The machine should be otherwise idle: timings are wall-clock.
"""

from __future__ import annotations

import argparse
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
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads:  # before torch loads: the extension's OpenMP and torch share one libgomp
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402

from hpcyuan import ops  # noqa: E402  (imports hpcyuan._C when built)
from hpcyuan.ops import reference  # noqa: E402

if ARGS.threads:
    torch.set_num_threads(ARGS.threads)
DEVICE = torch.device(ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu"))
WARMUP = ARGS.warmup or (3 if ARGS.quick else 5)
REPEATS = ARGS.repeats or (7 if ARGS.quick else 20)
PEERS = ("eager", "compile", "optim")
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


def _rand(*shape, grad=False, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).requires_grad_(grad)


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


def rms_norm_case(tokens, hidden, bwd):
    def make():
        x, w = _rand(tokens, hidden, grad=bwd), _rand(hidden, grad=bwd)
        grad_of = (0, 1) if bwd else None
        return _peers("rms_norm", reference.reference_rms_norm, (x, w, EPS), grad_of, _rand(tokens, hidden))
    numel = tokens * hidden  # fwd: read x, write y; bwd: read grad, x, write dx
    return make, numel * 4 * (5 if bwd else 2)


def lfa_filter_case(B, T, C, bwd):
    def make():
        params = (_rand(C // 2, C, 2, scale=0.05, grad=bwd), _rand(C // 2, scale=0.05, grad=bwd),
                  _rand(C, C // 2, 2, scale=0.05, grad=bwd), _rand(C, scale=0.05, grad=bwd), _rand(C, grad=bwd))
        args = (_rand(B, T, C, grad=bwd), *params, EPS)
        grad_of = tuple(range(6)) if bwd else None
        return _peers("lfa_filter", reference.reference_lfa_filter, args, grad_of, _rand(B, T, C))
    return make, 0


def router_case(N, E, bwd, top_k=2):
    def make():
        args = (_rand(N, E, grad=bwd), _rand(N, E, grad=bwd), _rand(N, E, grad=bwd), top_k)
        grad_of = (0, 1, 2) if bwd else None
        return _peers("attention_router", reference.reference_attention_router, args, grad_of, _rand(N, top_k))
    return make, 0


def fused_adamw_case(n):
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def make():
        state = (_rand(n), torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE), _rand(n))  # + grad
        kw = dict(hp, step=10, grad_scale=1.0)
        ext = getattr(torch.ops.hpcyuan, "fused_adamw", None)
        compiled = torch.compile(reference.reference_fused_adamw_, dynamic=False)
        param = torch.nn.Parameter(_rand(n))
        param.grad = _rand(n)
        opt = torch.optim.AdamW([param], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                weight_decay=hp["weight_decay"], foreach=True)
        return {"extension": None if ext is None else (lambda: ext(*state, None, *kw.values())),
                "eager": lambda: reference.reference_fused_adamw_(*state, None, **kw),
                "compile": lambda: compiled(*state, None, **kw),
                "optim": opt.step}
    return make, n * 4 * 7  # read master, exp_avg, exp_avg_sq, grad; write the first three


def cases(quick: bool) -> list[Case]:
    """(config, shape) per op: demo = hidden 256, 8 x 128 tokens; yuan-2b = hidden 2048; M32 = 32 experts."""
    out = []
    norm = [("demo 1024x256", 1024, 256)] + ([] if quick else [("yuan-2b 4096x2048", 4096, 2048)])
    lfa = [("demo 8x128x256", 8, 128, 256)] + ([] if quick else [("yuan-2b 1x1024x2048", 1, 1024, 2048)])
    router = [("M32 4096x32", 4096, 32)] if quick else [("E=8 4096x8", 4096, 8), ("M32 4096x32", 4096, 32),
                                                        ("M32 16384x32", 16384, 32)]
    for bwd in (False, True):
        mode = "fwd+bwd" if bwd else "fwd"
        out += [Case("rms_norm", s, mode, *rms_norm_case(t, h, bwd)) for s, t, h in norm]
        out += [Case("lfa_filter", s, mode, *lfa_filter_case(b, t, c, bwd)) for s, b, t, c in lfa]
        out += [Case("attention_router", s, mode, *router_case(n, e, bwd)) for s, n, e in router]
    n = 4 << 20 if quick else 16 << 20
    out.append(Case("fused_adamw", f"flat shard {n >> 20}M", "step", *fused_adamw_case(n)))
    return out


def timed(fn: Callable[[], object]) -> float:
    """Median wall time of REPEATS calls after WARMUP calls, in seconds (device synchronized)."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    for _ in range(WARMUP):
        fn()
    sync()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def row(case: Case, res: dict) -> str:
    ext = res.get("extension")
    ok = isinstance(ext, float)
    cols = [f"{case.op:<17}{case.shape:<21}{case.mode:<8}", _ms(ext)] + [_ms(res.get(p)) for p in PEERS]
    cols += [f"{res[p] / ext:{W - 1}.2f}x" if ok and isinstance(res.get(p), float) else f"{'-':>{W}}"
             for p in PEERS]
    cols.append(f"{case.bytes_moved / ext / 1e9:{W}.1f}" if ok and case.bytes_moved else f"{'-':>{W}}")
    goal = GOALS.get(case.op)
    if goal and ok and isinstance(res.get(goal[0]), float):
        ratio = res[goal[0]] / ext
        cols.append(f"  >= {goal[1]}x {goal[0]}: {'met' if ratio >= goal[1] else 'NOT met'}")
    return " ".join(cols)


def main() -> None:
    built = sorted(ops.extension_ops()) or ["none"]
    print(f"torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, extension ops: {', '.join(built)}")
    print(f"median of {REPEATS} calls after {WARMUP} warm-up calls; times in ms; speed-up = peer / extension")
    head = " ".join([f"{'op':<17}{'shape':<21}{'mode':<8}", f"{'ext ms':>{W}}"] + [f"{p + ' ms':>{W}}" for p in PEERS]
                    + [f"{'x ' + p:>{W}}" for p in PEERS] + [f"{'GB/s':>{W}}", " goal"])
    print(head)
    print("-" * len(head))
    for case in cases(ARGS.quick):
        print(row(case, measure(case)), flush=True)


if __name__ == "__main__":
    main()
