"""The sample log: which dataset samples each global batch trained on, to prove none was repeated
or skipped across preemptions, resumes on other layouts, and spike-guard rewinds.

    log = SampleLog(job, run_dir / "samples.jsonl")   # train.sample_log = true
    log.trained(step, consumed_samples, local_indices)  # every rank of the first pipeline stage
    log.skipped(consumed_samples, reason)               # main rank
    batches = effective_batches(path)                   # {consumed_samples: entry}, last word wins

One JSON line per global batch, appended by the main rank: {"consumed_samples", "step", "layout",
"indices"} (indices: the dp replicas' slices in replica order, gathered from the ranks that really
fed them) or {"consumed_samples", "skipped": reason}. A run that dies and resumes from a checkpoint
(or rewinds) trains some batches again; their later lines replace the earlier ones, so the *last*
line for each position is what the final model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class SampleLog:
    def __init__(self, job, path: Path):
        self.job, self.path = job, Path(path)
        topo = job.topology
        self.layout = f"pp{topo.pp}xdp{topo.dp}"

    def trained(self, step: int, consumed_samples: int, local_indices: np.ndarray) -> None:
        if self.job.pp_rank != 0:
            return  # the first stage's dp group holds every slice once
        parts = self.job.groups.dp.gather_bytes(np.ascontiguousarray(local_indices, dtype=np.int64).tobytes())
        if self.job.is_main:
            indices = np.concatenate([np.frombuffer(p, dtype=np.int64) for p in parts])
            self._append({"consumed_samples": consumed_samples, "step": step, "layout": self.layout,
                          "indices": indices.tolist()})

    def skipped(self, consumed_samples: int, reason: str) -> None:
        if self.job.is_main:
            self._append({"consumed_samples": consumed_samples, "skipped": reason})

    def _append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def effective_batches(path) -> dict[int, dict]:
    """{consumed_samples: the last line logged for that position}, in position order."""
    last: dict[int, dict] = {}
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            last[row["consumed_samples"]] = row
    return dict(sorted(last.items()))
