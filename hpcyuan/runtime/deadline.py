"""The job's deadline: stop early enough to save before Slurm ends the slot, signal or not.

    deadline = Deadline.of_job(job, state_bytes)          # every rank; rank 0 asks squeue once
    deadline.observe(step_s=..., save_s=...)              # after every step
    if deadline.too_close(): ...                          # train.py: all ranks agree (signals.py)

Slurm's `--signal=B:USR2@N` may come up to 60 s early (its timer ticks once a minute) or not at all
(it only goes to the batch shell; a requeued or backfilled job may have had --time cut to
--time-min), so the training reads the real end time of its slot at start (runtime/env.py,
`squeue -o %e`) and, after every step, stops when the next step plus a save might not fit before
it. The margin is learned, not configured: the slowest step seen so far, plus the longest save
measured (or, before the first save, an estimate from the bytes to write), times a safety factor,
plus a fixed slack for the exit itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hpcyuan.runtime.env import JobEnv, slurm_job_end_time

SAFETY = 1.5
"""Factor on the measured step and save times: I/O on a shared file system varies."""
SLACK_S = 10.0
"""Seconds kept for everything after the save: agreeing, closing files, MPI_Finalize, srun's exit."""
ASSUMED_WRITE_BYTES_PER_S = 200e6
"""Write speed assumed before the first save is measured (a slow shared file system)."""


@dataclass
class Deadline:
    end_time: float | None
    """Unix time at which the scheduler ends this job; None: no limit known (not a Slurm job)."""
    state_bytes: int = 0
    """Bytes this job writes per checkpoint (for the first estimate of a save's duration)."""
    slowest_step_s: float = 0.0
    longest_save_s: float = 0.0

    @classmethod
    def of_job(cls, job, state_bytes: int) -> "Deadline":
        end = torch.tensor([-1.0], dtype=torch.float64)
        env = JobEnv.current()
        if job.is_main and env.job_id:
            end[0] = slurm_job_end_time(env.job_id) or -1.0
        job.groups.world.broadcast(end)
        return cls(float(end) if float(end) > 0 else None, state_bytes)

    def observe(self, step_s: float = 0.0, save_s: float = 0.0) -> None:
        self.slowest_step_s = max(self.slowest_step_s, step_s)
        self.longest_save_s = max(self.longest_save_s, save_s)

    def margin_s(self) -> float:
        save_s = self.longest_save_s or self.state_bytes / ASSUMED_WRITE_BYTES_PER_S
        return SAFETY * (self.slowest_step_s + save_s) + SLACK_S

    def too_close(self, now: float | None = None) -> bool:
        """True when one more step and a save might not end before the job does."""
        if self.end_time is None:
            return False
        return (now if now is not None else time.time()) + self.margin_s() >= self.end_time
