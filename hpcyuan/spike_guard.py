"""The spike guard: decides when a loss says training went wrong and must rewind.

    guard = SpikeGuard(cfg.train)
    reason = guard.check(loss)      # None, or why to rewind to the last good checkpoint

Two triggers, as large runs use them (OPT, BLOOM, Yuan's own logs): a loss above `spike_factor` x
the mean of the last `spike_window` finite losses (checked once the window is full, so the fast fall
at the start of training never triggers it), or `nonfinite_limit` non-finite losses in a row (the
optimizer skips each such step; several in a row mean the state itself is broken). The caller
rewinds to the last good checkpoint and skips the offending batch (train.py); after a rewind the
window starts afresh. A spike is not added to the window, so one bad step never raises the bar.
"""

from __future__ import annotations

import math
from collections import deque

from hpcyuan.config import TrainConfig


class SpikeGuard:
    def __init__(self, cfg: TrainConfig):
        self.factor, self.nonfinite_limit = cfg.spike_factor, cfg.nonfinite_limit
        self.recent: deque[float] = deque(maxlen=cfg.spike_window)
        self.nonfinite_run = 0

    def check(self, loss: float) -> str | None:
        """Record this step's loss; return why training should rewind, or None."""
        if not math.isfinite(loss):
            self.nonfinite_run += 1
            if self.nonfinite_limit and self.nonfinite_run >= self.nonfinite_limit:
                return f"{self.nonfinite_run} non-finite losses in a row"
            return None
        self.nonfinite_run = 0
        if self.factor and len(self.recent) == self.recent.maxlen:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.factor * mean:
                return f"loss {loss:.4f} > {self.factor:g} x the mean {mean:.4f} of the last {len(self.recent)} steps"
        self.recent.append(loss)
        return None

    def reset(self) -> None:
        self.recent.clear()
        self.nonfinite_run = 0
