"""AdamW for data-parallel training with ZeRO: optimizer state partitioned over the dp group.

    optimizer = ZeroAdamW(model, cfg.train, zero_stage=1, dp=groups.dp, world=groups.world)
    optimizer.zero_grad()
    optimizer.backward(loss / n, last_micro_batch=...)   # per micro-batch
    result = optimizer.step(lr)                           # StepResult(grad_norm, skipped)

One step (stage s >= 1; Psi = this stage's parameters, n = dp ranks, all fp32):
  1. gradients summed over dp: each rank receives its block (dp.py: bucketed reduce-scatter);
  2. the global gradient norm from one all-reduce of a single number over the whole job (each
     element counted once: its owner's block);
  3. a non-finite norm skips the step on every rank (they all see the same norm); else the fused
     AdamW kernel (hpcyuan.ops.fused_adamw_) scales the block by clip / n, updates the fp32 master
     block and its m and v, and writes the new values into the model's own parameters;
  4. all-gather of the flat parameter buffer: every rank holds every new weight.
After `freeze()` (an async checkpoint's snapshot) step 3 reads master, m and v and writes the new ones
into a second set of buffers, which training then uses: the frozen ones stay as they were, for the
checkpoint writer. The price: that second set's memory, and that one step is slower on a CPU (1.1x
here: its stores go to memory it did not just read) while on a GPU it takes the same time.
Memory of master + m + v: 12 Psi / n bytes (plus padding to a multiple of n); stage 0 keeps all of
it on every rank (12 Psi) and all-reduces gradients instead of steps 1 and 4. Wire bytes per step
and rank: 2 (n-1)/n x 4 Psi for stages 0 and 1, the ZeRO paper's 2 Psi elements (its large-n value);
stage 2 reduce-scatters every micro-batch. The update equals torch.optim.AdamW's (same operation
order, tested), and dp = 2, 4 training equals one process within fp32 rounding (tests/mpi).

Pipeline parallel: `tied_params` names this stage's copy of the tied embedding (`embedding.weight` on
the first stage, `lm_head.weight` on the last) and `tied_group` the two stages of this replica. Their
gradients are summed over it before the dp reduction (dp.py), so both copies see the same gradient,
start equal and stay equal; the norm counts the copy once (the first stage's).
"""

from __future__ import annotations

import math

import torch

from hpcyuan import ops
from hpcyuan.config import TrainConfig
from hpcyuan.optim import StepResult
from hpcyuan.parallel.dp import GradSync
from hpcyuan.parallel.flat import FlatParams, Region
from hpcyuan.runtime.comm import Comm

DEFAULT_BUCKET_NUMEL = 25 * 2**20 // 4
"""25 MiB of fp32 gradients per bucket: large enough to reach full bandwidth, small enough to overlap."""


class ZeroAdamW:
    """AdamW over one pipeline stage's parameters, data parallel over `dp` with ZeRO stage 0, 1 or 2.
    `world` is the group whose ranks together hold every parameter once per dp rank (the whole job):
    the gradient norm is summed over it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, zero_stage: int, dp: Comm, world: Comm,
                 bucket_numel: int = DEFAULT_BUCKET_NUMEL, tied_params: tuple[str, ...] = (),
                 tied_group: Comm | None = None):
        self.cfg, self.zero_stage, self.dp, self.world = cfg, zero_stage, dp, world
        self.flat = FlatParams(model, cfg.weight_decay, shards=dp.size, tied=tied_params)
        self.sync = GradSync(self.flat, dp, zero_stage, bucket_numel, tied_group)
        self._norm_skips_tied = tied_group is not None and tied_group.rank != 0
        self.owned = self.flat.shard(dp.rank) if zero_stage > 0 else Region(0, self.flat.padded_numel)
        """The part of the flat buffer this rank's optimizer updates."""
        self.master = self.flat.data[self.owned.start:self.owned.end].float().clone()
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)
        self.steps_taken = 0
        """AdamW's step count t (skipped steps do not count), for the bias corrections."""
        self._pieces = self.flat.decay_regions(self.owned)
        self._frozen = False
        """freeze() was called: the next step writes master, m and v into `_spare` and swaps."""
        self._spare: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def zero_grad(self) -> None:
        self.sync.zero_grad()

    def backward(self, output: torch.Tensor, last_micro_batch: bool, grad: torch.Tensor | None = None) -> None:
        """output.backward(grad) (a loss, or a stage's output and its gradient), with the dp reduction
        started inside when this is the step's last micro-batch."""
        self.sync.backward(output, last_micro_batch, grad)

    def step(self, lr: float) -> StepResult:
        self.sync.finish()
        grad_norm = self._global_grad_norm()
        if not math.isfinite(grad_norm):
            # A single overflow must not poison the Adam moments: drop this step's gradient.
            self.zero_grad()
            return StepResult(grad_norm, skipped=True)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        clip = min(1.0, max_norm / (grad_norm + 1e-6))  # the factor of torch.nn.utils.clip_grad_norm_
        self.steps_taken += 1
        grad = self._owned_grad()
        state = (self.master, self.exp_avg, self.exp_avg_sq)
        targets = self._take_spare() if self._frozen else state
        for region, weight_decay in self._pieces:
            local = slice(region.start - self.owned.start, region.end - self.owned.start)
            ops.fused_adamw_(
                *(t[local] for t in state), grad[local], self.flat.data[region.start:region.end],
                lr=lr, beta1=self.cfg.beta1, beta2=self.cfg.beta2, eps=self.cfg.adam_eps,
                weight_decay=weight_decay, step=self.steps_taken, grad_scale=clip / self.dp.size,
                into=None if targets is state else tuple(t[local] for t in targets),
            )
        if targets is not state:  # the frozen buffers become the spare ones, for the next freeze
            self._spare, self._frozen = state, False
            self.master, self.exp_avg, self.exp_avg_sq = targets
        if self.zero_stage > 0:
            self.dp.all_gather_inplace(self.flat.data)
        return StepResult(grad_norm, skipped=False)

    def freeze(self) -> dict[str, torch.Tensor]:
        """This rank's master, m and v as they are now, kept unchanged until the next freeze: the next
        step reads them and writes its result into a second set of buffers (out of place, the same
        bytes moved), which training goes on with. An async checkpoint writes the frozen tensors in
        the background with no copy (checkpoint/saver.py). The second set costs one more copy of
        master, m and v (12 bytes per owned parameter), allocated at the first freeze; the caller
        must be done with the frozen tensors before it freezes again or restores into the optimizer."""
        self._frozen = True
        return {"master": self.master, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def _take_spare(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._spare is None:
            self._spare = tuple(torch.empty_like(self.master) for _ in range(3))
        spare, self._spare = self._spare, None
        return spare

    def rebuild_weights(self) -> None:
        """The model's weights from the master block, as a step leaves them: this rank's block cast
        into the flat buffer, then (ZeRO-1/2) the all-gather that gives every rank every weight. A
        checkpoint load reads only master, m and v (checkpoint/state.py); a collective over dp."""
        with torch.no_grad():
            self.flat.data[self.owned.start:self.owned.end].copy_(self.master)
        if self.zero_stage > 0:
            self.dp.all_gather_inplace(self.flat.data)

    def _owned_grad(self) -> torch.Tensor:
        """The summed gradient of the owned region."""
        return self.sync.grad if self.zero_stage == 0 else self.sync.grad_shard

    def _global_grad_norm(self) -> float:
        """L2 norm of the dp-mean gradient over the whole model, from one all-reduce of one number."""
        shard = self.flat.shard(self.dp.rank)
        block = self.sync.grad[shard.start:shard.end] if self.zero_stage == 0 else self.sync.grad_shard
        parts = [block]
        tied = self.flat.tied and self.flat.tied.intersect(shard)
        if self._norm_skips_tied and tied:  # the first stage counts the tied embedding, not this copy
            parts = [block[:tied.start - shard.start], block[tied.end - shard.start:]]
        sum_sq = sum(torch.linalg.vector_norm(part, dtype=torch.float64).square() for part in parts).reshape(1)
        self.world.all_reduce(sum_sq)
        return math.sqrt(float(sum_sq)) / self.dp.size

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the fp32 master block and the Adam moments on this rank, counted from the tensors."""
        return {name: t.numel() * t.element_size()
                for name, t in (("master", self.master), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq))}
