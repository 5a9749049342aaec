"""The 1F1B bubble, measured: idle share per stage against (p-1)/(m+p-1), p = 4, m = 4, 8, 16.

    .venv/bin/mpiexec -n 4 .venv/bin/python benchmarks/pipeline_bubble.py          # ~1 minute
    .venv/bin/mpiexec -n 4 .venv/bin/python benchmarks/pipeline_bubble.py --model  # the real tiny model too

The pipeline executor (hpcyuan/parallel/pipeline.py) runs its real schedule with real MPI transfers
of (B, T, h) activations and gradients between 4 ranks; what it does in FORWARD and BACKWARD is
replaced by a fixed wait (forward FORWARD_S, backward twice that, 1F1B's usual cost ratio) that
uses no CPU. On this 2-core machine 4 computing ranks would share 2 cores, so real compute gets
slower exactly when all stages are busy (the steady state) and the measured bubble would be the
CPU's, not the schedule's. With the waits the figure is the executor's: the schedule plus every
transfer and wait it adds. `--model` also runs the real tiny model (pp = 4, oversubscribed 2x),
printed for what it is. Idle share = 1 - (time in FORWARD + BACKWARD) / step time (timeline.py),
median over STEPS steps. Results: BENCHMARKS.md.
"""

import argparse
import statistics
import time

import torch

from hpcyuan.config import load_config
from hpcyuan.data import TokenDataset, check_data, micro_batches
from hpcyuan.parallel.pipeline import Pipeline, build_stage
from hpcyuan.parallel.timeline import gather_timeline, idle_shares
from hpcyuan.runtime.comm import Comm
from hpcyuan.runtime.topology import Topology
from hpcyuan.runtime.watchdog import run_main

FORWARD_S = 0.02
STEPS = 3


class Wait(torch.autograd.Function):
    """Identity that takes `seconds` in forward and twice that in backward, without using the CPU."""

    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        time.sleep(seconds)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(2 * ctx.seconds)
        return grad, None


class WaitStage(torch.nn.Module):
    """A stage with the interface of YuanStage whose compute is a fixed wait."""

    def __init__(self, hidden_size: int, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size))

    def forward(self, inputs, position_ids, targets=None):
        x = self.weight.expand(*inputs.shape, -1) if self.first else inputs + self.weight
        x = Wait.apply(x, FORWARD_S)
        return x.square().mean() if self.last else x


class PlainBackward:
    """The optimizer interface Pipeline.train_step drives, without an optimizer."""

    def backward(self, output, last_micro_batch, grad=None):
        torch.autograd.backward(output, grad)


def measure(pipe: Pipeline, batches, pp: Comm) -> list[float] | None:
    shares = []
    for _ in range(STEPS):
        pp.barrier()  # stages start a step together, as after the optimizer's collectives in training
        pipe.timeline = []
        pipe.train_step(batches, PlainBackward())
        stages = gather_timeline(pp, pipe.timeline)
        if stages is not None:
            shares.append(idle_shares(stages))
    return [statistics.median(s[i] for s in shares) for i in range(pp.size)] if shares else None


def main(with_model: bool) -> None:
    world = Comm.world(timeout_s=300)
    p, rank = world.size, world.rank
    cfg = load_config("tiny", [f"parallel.pp={p}", "train.micro_batch_size=2"])
    eod_id = check_data(cfg)["eod_id"]
    dataset = TokenDataset(cfg.data.dir, "train", cfg.model.seq_length)
    runs = [("wait", WaitStage(cfg.model.hidden_size, rank == 0, rank == p - 1))]
    if with_model:
        torch.set_num_threads(1)
        runs.append(("tiny model", build_stage(cfg.model, Topology.for_world(cfg.parallel, cfg.model.num_layers, p),
                                                rank).requires_grad_()))
    if rank == 0:
        print(f"1F1B on p = {p} stages, {STEPS} steps each, idle share per stage (median) vs (p-1)/(m+p-1)")
    for name, stage in runs:
        for m in (4, 8, 16):
            batches = list(micro_batches(dataset, torch.arange(2 * m).numpy(), 2, eod_id))
            pipe = Pipeline(stage, world, rank, p, cfg)
            shares = measure(pipe, batches, world)
            if shares is not None:
                theory = (p - 1) / (m + p - 1)
                worst = max(abs(s - theory) for s in shares)
                print(f"{name:<11} m = {m:>2}: " + "  ".join(f"{100 * s:5.1f}%" for s in shares)
                      + f"   theory {100 * theory:5.1f}%   max gap {100 * worst:4.1f} points"
                      + ("   (within 5: yes)" if worst <= 0.05 else "   (within 5: NO)"), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="store_true", help="also run the real tiny model (oversubscribed)")
    run_main(main, parser.parse_args().model)
