"""pp x dp training with ZeRO on N ranks against one process training on the whole global batch.

    .venv/bin/mpiexec -n 4 .venv/bin/python tests/mpi/scripts/parallel_exactness.py tiny 2 2 1 20
    .venv/bin/mpiexec -n 2 .venv/bin/python tests/mpi/scripts/parallel_exactness.py tiny 2 1 1 20 1,3

Arguments: preset (tiny | tiny-m32), pp, dp, ZeRO stage (0 | 1 | 2), steps, and optionally
layers_per_stage ("1,3"). Every rank trains its stage with hpcyuan's own path (Job.start,
build_stage, Pipeline under 1F1B, ZeroAdamW; train.forward_backward) on its replica's slice of each
global batch of the real tiny data. Then rank 0 gathers every stage's weights and trains the whole
model in one process with torch.optim.AdamW + clip_grad_norm_ on the whole global batch (the
independent reference) and compares, fp32:
  - the loss of every step and every final parameter (both copies of the tied embedding included):
    max |difference| <= TOLERANCE (M32 weights: MOE_PARAM_TOLERANCE, see there);
  - the dp replicas of a stage hold the same final weights, bit for bit;
  - optimizer memory (master + m + v bytes, from the tensors) is 12 Psi_stage / dp plus padding, 3%;
  - with pp = 1: bytes sent per step against 2 (dp-1)/dp x 4 Psi (stage 2: a reduce-scatter per
    micro-batch), within 5%.
Small gradient buckets (BUCKET_NUMEL) make several buckets that meet the shards unevenly.
Prints "rank R: exactness passed" on every rank and a line "... max diff: loss L, params P" (rank 0).
"""

import math
import sys

import torch

from hpcyuan import ops
from hpcyuan.config import load_config
from hpcyuan.data import GlobalSampler, TokenDataset, check_data
from hpcyuan.model import build_model, param_groups
from hpcyuan.optim import learning_rate
from hpcyuan.parallel.pipeline import Pipeline, build_stage, tied_embedding
from hpcyuan.parallel.zero import ZeroAdamW
from hpcyuan.runtime.job import Job
from hpcyuan.runtime.watchdog import run_main
from hpcyuan.train import forward_backward, job_mean

TOLERANCE = 2e-5
"""fp32: the layout changes only the order of gradient sums (~1e-7 relative); 20 Adam steps keep it small."""
MOE_PARAM_TOLERANCE = 1e-4
"""M32 weights: a token whose top-2 router scores tie within rounding can pick another expert under
another summation order; after such a flip (seen once: tiny-m32 pp=2 x dp=2 ZeRO-2, step 17, loss
off by 3.5e-6 for that step) the expert weights differ by that token's update (seen 4e-5)."""
BUCKET_NUMEL = 5000


class TorchAdamW:
    """The single-process reference: torch.optim.AdamW with global-norm clipping."""

    def __init__(self, model, cfg):
        self.params, self.cfg = list(model.parameters()), cfg
        self.adamw = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                       betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, foreach=True)

    def zero_grad(self):
        self.adamw.zero_grad(set_to_none=True)

    def backward(self, output, last_micro_batch, grad=None):
        output.backward(grad)

    def step(self, lr):
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or math.inf, foreach=True)
        for group in self.adamw.param_groups:
            group["lr"] = lr
        self.adamw.step()


def reference_run(cfg, dataset, eod_id, steps):
    """One process, the whole model and global batch, torch's AdamW: (final named tensors, losses)."""
    model = build_model(cfg.model, seed=cfg.train.seed)
    optimizer = TorchAdamW(model, cfg.train)
    pipe = Pipeline(model, None, 0, 1, cfg)  # one stage: never communicates
    sampler = GlobalSampler(dataset.num_samples, cfg.train.global_batch_size, cfg.data.seed)
    losses = []
    for step in range(steps):
        losses.append(forward_backward(pipe, optimizer, dataset, sampler.global_batch(step * cfg.train.global_batch_size),
                                       eod_id, cfg))
        optimizer.step(learning_rate(step, cfg.train))
    return model.named_tensors(), losses


def gather_stage_weights(job, cfg, stage) -> dict[str, torch.Tensor] | None:
    """Rank 0 receives every stage's weights (from dp rank 0 of each stage): {(pp_rank, name): tensor}."""
    world, topo = job.groups.world, job.topology
    mine = torch.cat([t.reshape(-1) for t in stage.named_tensors().values()])
    if job.dp_rank == 0 and world.rank != 0:
        world.send(mine, 0)
    if world.rank != 0:
        return None
    weights = {}
    for pp_rank in range(topo.pp):
        shapes = {name: t.shape for name, t in build_stage(cfg.model, topo, pp_rank).named_tensors().items()}
        flat = mine if pp_rank == 0 else world.recv(torch.empty(sum(s.numel() for s in shapes.values())),
                                                    topo.rank_of(pp_rank, 0))
        for name, piece in zip(shapes, flat.split([s.numel() for s in shapes.values()])):
            weights[(pp_rank, name)] = piece.view(shapes[name])
    return weights


def main(preset: str, pp: int, dp: int, zero_stage: int, steps: int, layers: str = "") -> None:
    overrides = [f"parallel.pp={pp}", f"parallel.dp={dp}", f"parallel.zero_stage={zero_stage}", "parallel.timeout_s=120"]
    if layers:
        overrides.append(f"parallel.layers_per_stage=[{layers}]")
    cfg = load_config(preset, overrides)
    assert not cfg.train.bf16 and cfg.model.attention_dropout == 0, "exactness is checked in fp32 without dropout"
    ops.set_kernels("reference")
    job = Job.start(cfg)
    world = job.groups.world
    eod_id = check_data(cfg)["eod_id"]
    dataset = TokenDataset(cfg.data.dir, "train", cfg.model.seq_length)

    stage = build_stage(cfg.model, job.topology, job.pp_rank)
    stage.init_weights(cfg.train.seed)
    tied = tied_embedding(stage)
    optimizer = ZeroAdamW(stage, cfg.train, zero_stage, job.groups.dp, world, bucket_numel=BUCKET_NUMEL,
                          tied_params=tied, tied_group=job.embedding if tied else None)
    pipe = Pipeline(stage, job.groups.pp, job.pp_rank, pp, cfg)
    sampler = GlobalSampler(dataset.num_samples, cfg.train.global_batch_size, cfg.data.seed)
    losses, sent = [], []
    for step in range(steps):
        world.reset_stats()
        indices = sampler.local_batch(step * cfg.train.global_batch_size, job.dp_rank, dp)
        loss = forward_backward(pipe, optimizer, dataset, indices, eod_id, cfg)
        optimizer.step(learning_rate(step, cfg.train))
        sent.append(sum(s["bytes"] for s in world.stats().values()) + sum(
            s["bytes"] for g in (job.groups.dp, job.groups.pp) for s in g.stats().values()))
        for g in (job.groups.dp, job.groups.pp):
            g.reset_stats()
        losses.append(job_mean(job, loss))

    # The dp replicas of a stage hold the same weights, bit for bit.
    params = optimizer.flat.data
    reference = params.clone()
    job.groups.dp.broadcast(reference, root=0)
    assert torch.equal(params, reference), f"rank {world.rank} differs from its dp rank 0"

    # Memory: 12 Psi / dp bytes of master + m + v, plus padding.
    psi = optimizer.flat.numel
    formula = 12 * psi / (dp if zero_stage > 0 else 1)
    counted = sum(optimizer.state_bytes().values())
    assert abs(counted / formula - 1) <= 0.03, f"optimizer memory {counted} B vs 12 Psi/dp = {formula:.0f} B"
    line = f"rank {world.rank}: Psi {psi:,}, optimizer memory {counted / formula:.4f} x 12 Psi/dp"

    # Traffic (pp = 1): gradients reduced + weights gathered (or one all-reduce) = 2 (dp-1)/dp x 4 Psi.
    if pp == 1 and dp > 1:
        per_step = sum(sent[1:]) / max(len(sent) - 1, 1)
        wire = 2 * (dp - 1) / dp * 4 * psi
        expected = wire if zero_stage < 2 else wire / 2 * (cfg.num_microbatches + 1)
        assert abs(per_step / expected - 1) <= 0.05, f"sent {per_step:.0f} B/step vs {expected:.0f} B"
        line += f", sent {per_step:,.0f} B/step = {per_step / expected:.4f} x the formula"
    print(line, flush=True)

    weights = gather_stage_weights(job, cfg, stage)
    if world.rank == 0:
        single = load_config(preset)
        ref_weights, ref_losses = reference_run(single, dataset, eod_id, steps)
        loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
        print("loss difference per step:", " ".join(f"{abs(a - b):.1e}" for a, b in zip(losses, ref_losses)))
        assert {name for _, name in weights} == set(ref_weights), "the stages do not hold the whole model"
        diffs = {name: float((t - ref_weights[name]).abs().max()) for (_, name), t in weights.items()}
        worst = max(diffs, key=diffs.get)
        param_diff = diffs[worst]
        split = list(job.topology.layers_per_stage)
        print(f"{preset} pp={pp} {split} x dp={dp} ZeRO-{zero_stage}, {steps} steps: max diff: loss {loss_diff:.3e}, "
              f"params {param_diff:.3e} ({worst}) (tolerance {TOLERANCE:g}, M32 weights {MOE_PARAM_TOLERANCE:g}); losses {losses[0]:.4f} -> {losses[-1]:.4f}",
              flush=True)
        param_tolerance = MOE_PARAM_TOLERANCE if cfg.model.is_moe else TOLERANCE
        assert loss_diff <= TOLERANCE and param_diff <= param_tolerance, "parallel training differs from one process"
    world.barrier()
    print(f"rank {world.rank}: exactness passed", flush=True)


if __name__ == "__main__":
    run_main(main, sys.argv[1], *map(int, sys.argv[2:6]), *sys.argv[6:])
