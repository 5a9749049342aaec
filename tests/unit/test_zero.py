"""ZeroAdamW on one rank against torch.optim.AdamW, and the flat buffer it shards.

The multi-rank exactness (dp = 2, 4; ZeRO 0/1/2) is tests/mpi/test_parallel.py; here one rank shows the
update itself: every ZeRO stage gives torch.optim.AdamW(foreach) + clip_grad_norm_ within 1e-6 over
several steps with clipping active and both weight-decay groups, and a non-finite gradient changes
nothing. `freeze` (an async checkpoint's snapshot) keeps the frozen state unchanged through later steps
while training goes on bit-identical to a run that never froze.
"""

import math

import pytest
import torch

from hpcyuan.config import TrainConfig
from hpcyuan.model import param_groups
from hpcyuan.parallel.flat import FlatParams, Region
from hpcyuan.parallel.zero import ZeroAdamW
from hpcyuan.runtime.comm import Comm

CFG = TrainConfig(lr=1e-2, weight_decay=0.1, grad_clip=0.5)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.LayerNorm(3))


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_update_equals_torch_adamw_with_clipping(zero_stage):
    ours, theirs = model(), model()
    opt = ZeroAdamW(ours, CFG, zero_stage, Comm.world(), Comm.world(), bucket_numel=16)
    ref = torch.optim.AdamW(param_groups(theirs, CFG.weight_decay), lr=CFG.lr, betas=(CFG.beta1, CFG.beta2),
                            eps=CFG.adam_eps, foreach=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(4, 5, generator=gen)
        opt.zero_grad()
        for i, half in enumerate((x[:2], x[2:])):  # two micro-batches: accumulate, then reduce
            opt.backward(10 * ours(half).square().sum(), last_micro_batch=i == 1)
        result = opt.step(lr=CFG.lr * (step + 1) / 6)
        ref.zero_grad()
        (10 * theirs(x).square().sum()).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), CFG.grad_clip, foreach=True)
        for group in ref.param_groups:
            group["lr"] = CFG.lr * (step + 1) / 6
        ref.step()
        assert result.grad_norm == pytest.approx(float(norm), rel=1e-5) and result.grad_norm > CFG.grad_clip
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters()))
    print(f"ZeRO-{zero_stage} vs torch AdamW after 6 clipped steps: max param diff {diff:.2e}")
    assert diff <= 1e-6


def _train(opt, m, steps, freeze_at=(), on_freeze=None):
    gen = torch.Generator().manual_seed(2)
    for step in range(steps):
        if step in freeze_at:
            on_freeze(step, opt.freeze())
        opt.zero_grad()
        opt.backward(10 * m(torch.randn(4, 5, generator=gen)).square().sum(), last_micro_batch=True)
        opt.step(lr=CFG.lr)


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_frozen_state_stays_while_training_goes_on_unchanged(zero_stage):
    plain, frozen = model(), model()
    opt_plain = ZeroAdamW(plain, CFG, zero_stage, Comm.world(), Comm.world())
    opt = ZeroAdamW(frozen, CFG, zero_stage, Comm.world(), Comm.world())
    snapshots = []

    def unchanged_since_freeze():
        state, copy = snapshots[-1]
        for kind in copy:
            assert torch.equal(state[kind], copy[kind]), f"{kind} changed after its freeze"

    def on_freeze(step, state):
        # the frozen state must stay as it was until the next freeze (a checkpoint writes it meanwhile)
        if snapshots:
            unchanged_since_freeze()
        weights = opt.flat.data[opt.owned.start:opt.owned.end]
        assert torch.equal(state["master"], weights)  # the weights are the (fp32) master: nothing to copy
        snapshots.append((state, {k: t.clone() for k, t in state.items()}))

    _train(opt_plain, plain, 8)
    _train(opt, frozen, 8, freeze_at=(2, 3, 6), on_freeze=on_freeze)
    unchanged_since_freeze()
    for kind in ("master", "exp_avg", "exp_avg_sq"):
        assert torch.equal(getattr(opt, kind), getattr(opt_plain, kind)), kind
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), plain.parameters()))


def test_non_finite_gradient_is_skipped_and_changes_nothing():
    m = model()
    opt = ZeroAdamW(m, CFG, 1, Comm.world(), Comm.world())
    before = [p.detach().clone() for p in m.parameters()]
    opt.zero_grad()
    opt.backward(m(torch.randn(2, 5)).sum() * math.inf, last_micro_batch=True)
    result = opt.step(lr=1e-2)
    assert result.skipped and not math.isfinite(result.grad_norm)
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))
    assert opt.steps_taken == 0 and not opt.exp_avg.any() and not opt.exp_avg_sq.any()

    opt.zero_grad()
    opt.backward(m(torch.randn(2, 5)).sum(), last_micro_batch=True)
    result = opt.step(lr=1e-2)
    assert not result.skipped and math.isfinite(result.grad_norm)
    assert not all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_flat_buffer_layout_shards_and_buckets():
    m = model()
    values = [p.detach().clone() for p in m.parameters()]
    flat = FlatParams(m, weight_decay=0.1, shards=5)
    # values kept, parameters are views of the buffer, padding to a multiple of the shards is zero
    assert all(torch.equal(v, p) for v, p in zip(values, m.parameters()))
    assert all(p.data_ptr() >= flat.data.data_ptr() for p in m.parameters())
    assert flat.numel == sum(v.numel() for v in values) == (35 + 7) + (21 + 3) + (3 + 3)
    assert flat.padded_numel == 75 and not flat.data[flat.numel:].any()
    # decayed (2-D) weights first, last layer first; then the 1-D ones
    assert [s.name for s in flat.segments] == ["2.weight", "0.weight", "3.bias", "3.weight", "2.bias", "0.bias"]
    shards = [flat.shard(r) for r in range(5)]
    assert shards[0] == Region(0, 15) and shards[4] == Region(60, 75)
    # the decayed weights end at element 21 + 35 = 56: the shard across it gets two pieces
    assert flat.decay_regions(shards[3]) == [(Region(45, 56), 0.1), (Region(56, 60), 0.0)]
    assert flat.decay_regions(Region(0, 75)) == [(Region(0, 56), 0.1), (Region(56, 75), 0.0)]
    assert flat.buckets(bucket_numel=20) == [[0], [1], [2, 3, 4, 5]]  # a bucket closes once it has >= 20
