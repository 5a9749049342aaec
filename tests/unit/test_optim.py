"""Learning-rate schedule and the AdamW step: warm-up, cosine floor, decay groups, non-finite skip."""

import math

import pytest
import torch

from hpcyuan.config import TrainConfig
from hpcyuan.optim import LocalAdamW, learning_rate


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, cfg) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))          # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))     # falling after
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)                  # half-way through the cosine
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)  # floor, then constant


def test_explicit_decay_steps():
    cfg = TrainConfig(steps=1000, lr=1.0, warmup_steps=0, decay_steps=100, min_lr_ratio=0.0)
    assert learning_rate(50, cfg) == pytest.approx(0.5)
    assert learning_rate(500, cfg) == 0.0


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4, bias=True), torch.nn.LayerNorm(4))


def test_non_finite_gradient_is_skipped_and_changes_nothing():
    m = model()
    opt = LocalAdamW(m, TrainConfig())
    before = [p.detach().clone() for p in m.parameters()]
    m(torch.randn(2, 4)).sum().backward()
    next(m.parameters()).grad[0, 0] = math.inf
    result = opt.step(lr=1e-2)
    assert result.skipped and not math.isfinite(result.grad_norm)
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))
    assert not opt.optimizer.state  # no Adam moment was touched

    m(torch.randn(2, 4)).sum().backward()
    result = opt.step(lr=1e-2)
    assert not result.skipped and math.isfinite(result.grad_norm)
    assert not all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_clipping_bounds_the_update_norm():
    m = model()
    opt = LocalAdamW(m, TrainConfig(grad_clip=1.0))
    (1e6 * m(torch.randn(2, 4)).sum()).backward()
    result = opt.step(lr=0.0)
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters()))
    print(f"norm before clip {result.grad_norm:.3e}, after {float(clipped):.6f}")
    assert result.grad_norm > 1e3 and float(clipped) == pytest.approx(1.0, rel=1e-4)
