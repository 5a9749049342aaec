"""Busy polling and its fix, measured: how much does a waiting rank slow a computing one?

    .venv/bin/mpiexec -n 3 .venv/bin/python benchmarks/mpi_wait.py      # 3 ranks on 2 cores
    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/mpi_wait.py --latency-only   # part 2 only

Part 1: rank 0 runs a fixed matmul loop (~1 s alone) while ranks 1..n-1 wait for it, in turn
  sleep           waiters in time.sleep (the ideal: nobody polls)
  Barrier, Recv   waiters in a blocking MPI Barrier / Recv
  polite ...      waiters in Comm.barrier() / Comm.recv() (Ibarrier/Irecv + Test + sleep backoff)
and prints rank 0's compute time as a ratio to `sleep`, and the waiters' CPU share while waiting.
Part 2: what the polite wait costs when nobody is late: all-reduces of 8 floats and of 16 MiB
through Comm.all_reduce (adaptive spin, and a fixed 50 us spin) versus a blocking in-place MPI
Allreduce, time per call.
Figures are recorded in docs/runtime.md. Not a test: it prints, it does not assert.
"""

import statistics
import sys
import time

import torch
from mpi4py import MPI

from hpcyuan.runtime.comm import Comm
from hpcyuan.runtime.watchdog import PoliteWait, run_main

torch.set_num_threads(1)
WORLD = MPI.COMM_WORLD
COMM = Comm.world(timeout_s=120)
FIXED_SPIN = Comm(WORLD.Dup(), "world (fixed spin)", 120, PoliteWait(adaptive=False))
MODES = ("sleep", "Barrier", "polite barrier", "Recv", "polite recv")


def compute(reps: int) -> float:
    a = torch.randn(256, 256) / 16
    start = time.perf_counter()
    x = a
    for _ in range(reps):
        x = torch.tanh(a @ x)
    return time.perf_counter() - start


def calibrate() -> int:
    """Repetitions that take ~1 s on rank 0 alone (the others sleep), agreed by broadcast."""
    reps = 0
    if WORLD.rank == 0:
        reps = max(1, int(200 / compute(200)))
    else:
        time.sleep(1.5)
    return WORLD.bcast(reps, root=0)


def trial(mode: str, reps: int) -> tuple[float, float]:
    """Rank 0: its compute seconds. Waiters: their CPU share (process time / wall) while waiting."""
    WORLD.Barrier()
    token = torch.zeros(1)
    if WORLD.rank == 0:
        seconds = compute(reps)
        if mode in ("Recv", "polite recv"):
            for dest in range(1, WORLD.size):
                WORLD.Send(token.numpy(), dest=dest)
        elif mode == "polite barrier":
            COMM.barrier()  # a blocking Barrier never matches an Ibarrier: both sides alike
        else:
            WORLD.Barrier()
        return seconds, 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if mode == "sleep":
        time.sleep(3.0)  # longer than rank 0's loop, so rank 0 computes with idle neighbours
        WORLD.Barrier()
    elif mode == "Barrier":
        WORLD.Barrier()
    elif mode == "polite barrier":
        COMM.barrier()
    elif mode == "Recv":
        WORLD.Recv(token.numpy(), source=0)
    else:
        COMM.recv(token, source=0)
    return 0.0, (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def part1(rounds: int = 3) -> None:
    reps = calibrate()
    results = {mode: [] for mode in MODES}
    for _ in range(rounds):  # interleave modes so machine noise hits them alike
        for mode in MODES:
            results[mode].append(trial(mode, reps))
    seconds = {m: statistics.median(r[0] for r in rs) for m, rs in results.items()}
    shares = {m: WORLD.gather(statistics.median(r[1] for r in rs), root=0) for m, rs in results.items()}
    if WORLD.rank == 0:
        print(f"part 1: rank 0 computes {reps} matmuls while {WORLD.size - 1} ranks wait "
              f"(median of {rounds}; {WORLD.size} ranks)")
        print(f"{'waiters in':16s} {'rank 0 s':>9s} {'x sleep':>8s} {'waiter CPU':>11s}")
        for mode in MODES:
            cpu = statistics.mean(shares[mode][1:]) if WORLD.size > 1 else 0.0
            print(f"{mode:16s} {seconds[mode]:9.3f} {seconds[mode] / seconds['sleep']:8.2f} {cpu:10.0%}")


def per_call(fn, calls: int) -> float:
    WORLD.Barrier()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def part2() -> None:
    rows = []
    for label, numel, calls in (("8 floats", 8, 1000), ("16 MiB", 4 << 20, 10)):
        buf = torch.ones(numel)
        blocking = per_call(lambda: WORLD.Allreduce(MPI.IN_PLACE, buf), calls)
        polite = per_call(lambda: COMM.all_reduce(buf), calls)
        fixed = per_call(lambda: FIXED_SPIN.all_reduce(buf), calls)
        blocking2 = per_call(lambda: WORLD.Allreduce(MPI.IN_PLACE, buf), calls)  # bracket the drift
        rows.append((label, calls, min(blocking, blocking2), polite, fixed))
    if WORLD.rank == 0:
        print(f"\npart 2: all-reduce per call on {WORLD.size} ranks, nobody late")
        print(f"{'size':10s} {'calls':>6s} {'blocking':>11s} {'Comm adaptive':>14s} {'ratio':>6s}"
              f" {'fixed 50us spin':>16s} {'ratio':>6s}")
        for label, calls, b, p, f in rows:
            print(f"{label:10s} {calls:6d} {b * 1e6:9.1f}us {p * 1e6:12.1f}us {p / b:6.2f}"
                  f" {f * 1e6:14.1f}us {f / b:6.2f}")


if __name__ == "__main__":
    if "--latency-only" not in sys.argv:
        run_main(part1)
    run_main(part2)
