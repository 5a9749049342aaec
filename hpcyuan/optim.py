"""Learning-rate schedule and the single-process AdamW step (clip, skip non-finite, update).

The schedule is a pure function of the step, so a resumed run needs nothing but the step number.
`LocalAdamW.step()` returns the global gradient norm and whether the update was skipped; the
data-parallel ZeRO optimizer of the runtime keeps the same interface, so `train.py` does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hpcyuan.config import TrainConfig
from hpcyuan.model import param_groups


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


class LocalAdamW:
    """AdamW over one process's parameters: clip the global norm, skip non-finite steps."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grad_clip = cfg.grad_clip
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay),
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, foreach=True,
        )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, lr: float) -> StepResult:
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        if not math.isfinite(grad_norm):
            # A single overflow must not poison the Adam moments: drop this step's gradient.
            self.zero_grad()
            return StepResult(grad_norm, skipped=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return StepResult(grad_norm, skipped=False)
