"""The learning-rate schedule: warm-up, cosine decay, floor."""

import pytest

from hpcyuan.config import TrainConfig
from hpcyuan.optim import learning_rate


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
