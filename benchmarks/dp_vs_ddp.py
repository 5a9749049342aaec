"""hpcyuan data parallel (dp = 2, ZeRO-1, MPI) against PyTorch DDP + ZeroRedundancyOptimizer (gloo) and
against one process, on the same Yuan model and global batch, measured in one run.

    .venv/bin/python benchmarks/dp_vs_ddp.py              # ~4 minutes on 2 cores
    .venv/bin/python benchmarks/dp_vs_ddp.py --steps 4    # quicker, noisier

Runs, one after another (nothing else should run on the machine):
  hpcyuan dp=2        mpiexec -n 2, 1 thread per rank, ZeroAdamW (ZeRO-1) through train.forward_backward
  DDP + ZeRO gloo     2 ranks x 1 thread: DistributedDataParallel (no_sync while accumulating) +
                      torch.distributed.optim.ZeroRedundancyOptimizer(AdamW), same micro-batches
  1 process 2 thr.    hpcyuan on one process with 2 threads, the whole global batch
  1 rank 1 thread     hpcyuan on one process with 1 thread and half the global batch: the ideal
                      dp=2 rate is twice this one (parallel efficiency)
Every run trains the `demo` preset's model (5.3M parameters; pp = 1, micro-batches of 8) on the real
Shakespeare data, fp32,
kernels as built; it times `--steps` optimizer steps after 2 warm-up steps (median step time).
Printed: tokens/s, the goals of issue [B1] as ratios, bytes sent per step per rank against the
ZeRO paper's 2 Psi (ring: 2 (n-1)/n x 4 Psi bytes), optimizer memory against 12 Psi / n.
Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "demo"
WARMUP = 2
GOALS = {"vs_ddp": 1.15, "vs_single_2_threads": 1.0, "parallel_efficiency": 0.90}


# -- workers: one training configuration each, printing one RESULT line ------------------------


def worker(kind: str, steps: int, ranks: int) -> None:
    import torch

    from hpcyuan.config import load_config
    from hpcyuan.data import GlobalSampler, TokenDataset, check_data
    from hpcyuan.model import build_model
    from hpcyuan.optim import learning_rate
    from hpcyuan.parallel.pipeline import Pipeline
    from hpcyuan.train import forward_backward

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    dp = 2 if kind in ("hpcyuan", "ddp") else 1
    layout = ["parallel.pp=1", "train.micro_batch_size=8"]  # data parallel only, 2 micro-batches per rank
    cfg = load_config(PRESET, [*layout, f"parallel.dp={dp}"])
    if kind == "one_rank":  # one of dp=2's ranks, working alone: half the global batch
        cfg = load_config(PRESET, [*layout, "parallel.dp=1", f"train.global_batch_size={cfg.train.global_batch_size // 2}"])
    eod_id = check_data(cfg)["eod_id"]
    dataset = TokenDataset(cfg.data.dir, "train", cfg.model.seq_length)
    sampler = GlobalSampler(dataset.num_samples, cfg.train.global_batch_size, cfg.data.seed)
    model = build_model(cfg.model)
    model.init_weights(cfg.train.seed)
    if kind == "ddp":
        optimizer, comm_bytes, rank = ddp_optimizer(model, cfg)
        model = optimizer.ddp  # forward through DDP, or it does not reduce
    else:
        optimizer, comm_bytes, rank = hpcyuan_optimizer(model, cfg)
    pipe = Pipeline(model, None, 0, 1, cfg)  # one stage: forward, backward per micro-batch

    times, sent = [], []
    for step in range(WARMUP + steps):
        start_bytes = comm_bytes()
        t0 = time.perf_counter()
        indices = sampler.local_batch(step * cfg.train.global_batch_size, rank, dp)
        forward_backward(pipe, optimizer, dataset, indices, eod_id, cfg)
        optimizer.step(learning_rate(step, cfg.train))
        times.append(time.perf_counter() - t0)
        sent.append(comm_bytes() - start_bytes)
    step_s = statistics.median(times[WARMUP:])
    psi = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print("RESULT " + json.dumps({
            "kind": kind, "tokens_per_s": cfg.train.global_batch_size * cfg.model.seq_length / step_s,
            "step_s": step_s, "psi": psi, "sent_per_step": statistics.median(sent[WARMUP:]),
            "optimizer_bytes": optimizer_bytes(optimizer), "dp": dp,
        }), flush=True)


def hpcyuan_optimizer(model, cfg):
    from hpcyuan.parallel.zero import ZeroAdamW
    from hpcyuan.runtime.comm import Comm

    world = Comm.world(timeout_s=300)
    optimizer = ZeroAdamW(model, cfg.train, cfg.parallel.zero_stage, world, world)
    return optimizer, lambda: sum(s["bytes"] for s in world.stats().values()), world.rank


class DDPZeroAdamW:
    """DDP + ZeroRedundancyOptimizer behind the interface train.forward_backward drives."""

    def __init__(self, ddp, cfg):
        import torch
        from torch.distributed.optim import ZeroRedundancyOptimizer

        self.ddp, self.cfg = ddp, cfg
        self.optimizer = ZeroRedundancyOptimizer(
            ddp.parameters(), optimizer_class=torch.optim.AdamW, lr=cfg.train.lr,
            betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.adam_eps,
            weight_decay=cfg.train.weight_decay, foreach=True)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss, last_micro_batch, grad=None):
        import contextlib

        with contextlib.nullcontext() if last_micro_batch else self.ddp.no_sync():
            loss.backward(grad)

    def step(self, lr):
        import torch

        torch.nn.utils.clip_grad_norm_(self.ddp.parameters(), self.cfg.train.grad_clip, foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()


def ddp_optimizer(model, cfg):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, size = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["BENCH_INIT"], rank=rank, world_size=size)
    ddp = DistributedDataParallel(model)
    # DDP's traffic is not counted by gloo; its all-reduce of fp32 gradients is 2 (n-1)/n x 4 Psi
    return DDPZeroAdamW(ddp, cfg), lambda: 0, rank


def optimizer_bytes(optimizer) -> int:
    if hasattr(optimizer, "state_bytes"):
        return sum(optimizer.state_bytes().values())
    local = optimizer.optimizer.optim  # ZeroRedundancyOptimizer's optimizer of this rank's partition
    return sum(t.numel() * t.element_size() for state in local.state.values()
               for t in state.values() if hasattr(t, "numel") and t.dim() > 0)


# -- the driver: run each configuration, compare ------------------------------------------------


def run(kind: str, ranks: int, threads: int, steps: int) -> dict:
    python = sys.executable
    command = [python, __file__, "--worker", kind, "--steps", str(steps)]
    if ranks > 1:
        mpiexec = Path(python).parent / "mpiexec"
        command = [str(mpiexec), "-n", str(ranks), *command]
    with socket.socket() as s:  # a free port for gloo's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO),
           "BENCH_INIT": f"tcp://127.0.0.1:{port}"}
    print(f"  running {kind}: {ranks} rank(s) x {threads} thread(s) ...", flush=True)
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{kind} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run (after 2 warm-up)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, 0)

    from hpcyuan import ops
    from hpcyuan.config import load_config
    from hpcyuan.data import prepare_data

    prepare_data(load_config(PRESET))
    print(f"dp_vs_ddp: preset {PRESET}, {args.steps} timed steps per run, kernels: {ops.kernels_in_use()}, "
          f"{os.cpu_count()} CPUs")
    ours = run("hpcyuan", 2, 1, args.steps)
    ddp = run("ddp", 2, 1, args.steps)
    single = run("single", 1, 2, args.steps)
    one_rank = run("one_rank", 1, 1, args.steps)

    psi, n = ours["psi"], 2
    print(f"\n{'run':<28}{'tokens/s':>10}{'step s':>9}")
    for name, r in (("hpcyuan dp=2 ZeRO-1 (MPI)", ours), ("DDP + ZeRO (gloo), 2x1", ddp),
                    ("1 process, 2 threads", single), ("1 rank alone, 1 thread", one_rank)):
        print(f"{name:<28}{r['tokens_per_s']:>10,.0f}{r['step_s']:>9.3f}")
    ratios = {"vs_ddp": ours["tokens_per_s"] / ddp["tokens_per_s"],
              "vs_single_2_threads": ours["tokens_per_s"] / single["tokens_per_s"],
              "parallel_efficiency": ours["tokens_per_s"] / (2 * one_rank["tokens_per_s"])}
    print()
    for name, value in ratios.items():
        verdict = "met" if value >= GOALS[name] else "NOT MET"
        print(f"{name:<22}{value:>7.3f}   goal >= {GOALS[name]:.2f}   {verdict}")
    wire = 2 * (n - 1) / n * 4 * psi
    print(f"\nbytes sent per step per rank: {ours['sent_per_step']:,.0f} = {ours['sent_per_step'] / wire:.4f} x "
          f"2 (n-1)/n x 4 Psi ({wire:,.0f}; Psi = {psi:,}; the ZeRO paper's 2 Psi at its large-n limit)")
    formula = 12 * psi / n
    print(f"optimizer memory per rank: hpcyuan {ours['optimizer_bytes']:,} B = "
          f"{ours['optimizer_bytes'] / formula:.4f} x 12 Psi/n; DDP+ZeRO (m, v only) {ddp['optimizer_bytes']:,} B "
          f"= {ddp['optimizer_bytes'] / formula:.4f} x 12 Psi/n")


if __name__ == "__main__":
    main()
