"""The run's attempts: one JSON line each time `hpcyuan train` starts or ends on a run directory.

    attempts = Attempts(run_dir / "attempts.jsonl", enabled=job.is_main)
    attempts.started(job, state)            # after the resume: job id, restart, nodes, layout, step
    attempts.ended(state, "done")           # or "stopped by SIGUSR2" (exit 75)
    rows = read_attempts(path)              # [Attempt], for `hpcyuan status`

A run on backfill is a chain of short jobs (requeued, resubmitted, on other node counts); this file
is its history, written by the training itself, so it is the same with mpiexec, sbatch or submitit.
An attempt with a start and no end died (a crash, a killed node, SIGKILL at the time limit): the
next attempt resumed from the newest good checkpoint, which its `from_step` shows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from hpcyuan.runtime.env import JobEnv


@dataclass
class Attempt:
    started: float
    job_id: str | None
    restart: int
    nodes: int
    layout: str
    from_step: int
    to_step: int | None = None
    outcome: str | None = None
    """"done", "stopped by SIGTERM", ...; None: no end recorded (died, or still running)."""


class Attempts:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled

    def started(self, job, step: int) -> None:
        env, topo = JobEnv.current(), job.topology
        self._append({"event": "start", "time": time.time(), "job_id": env.job_id, "restart": env.restart_count,
                      "nodes": len(env.node_list) or 1, "layout": f"pp{topo.pp}xdp{topo.dp}", "step": step})

    def ended(self, step: int, outcome: str) -> None:
        self._append({"event": "end", "time": time.time(), "step": step, "outcome": outcome})

    def _append(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def read_attempts(path) -> list[Attempt]:
    out: list[Attempt] = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row["event"] == "start":
            out.append(Attempt(row["time"], row["job_id"], row["restart"], row["nodes"], row["layout"], row["step"]))
        elif out and out[-1].outcome is None:
            out[-1].to_step, out[-1].outcome = row["step"], row["outcome"]
    return out
