"""Learning-rate schedule and what an optimizer step reports.

The schedule is a pure function of the step, so a resumed run needs nothing but the step number.
The optimizer itself (AdamW with ZeRO over the data-parallel group) is hpcyuan/parallel/zero.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcyuan.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio`, then constant.

    `step` counts optimizer steps already taken, so step 0 trains at lr / warmup_steps (never 0).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps or max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepResult:
    grad_norm: float
    """Global L2 norm of the gradient before clipping (inf/nan when it was not finite)."""
    skipped: bool
    """True when the gradient was not finite and no parameter changed."""
