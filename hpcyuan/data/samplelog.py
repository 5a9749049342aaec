"""The sample log: which dataset samples each global batch trained on, to prove none was repeated
or skipped across preemptions, resumes on other layouts, and spike-guard rewinds.

    log = SampleLog(job, run_dir / "samples.jsonl")   # train.sample_log = true
    log.trained(step, consumed_samples, local_indices)  # every rank of the first pipeline stage
    log.skipped(consumed_samples, reason)               # main rank
    batches = effective_batches(path)                   # {consumed_samples: entry}, last word wins
    print(check_sample_log(path, sampler))              # or: hpcyuan data samples RUN_DIR

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

from hpcyuan.data.sampler import GlobalSampler
from hpcyuan.errors import HpcyuanError


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


def check_sample_log(path, sampler: GlobalSampler) -> str:
    """Check that the batches the final model was trained on are exactly the sampler's, position
    after position from 0, none missing (spike-guard skips are listed); since the sampler is a
    permutation within each epoch, no sample was then repeated or skipped. Returns a one-line
    summary; raises HpcyuanError naming the first position that is wrong."""
    g, expected, samples, skipped = sampler.global_batch_size, 0, 0, []
    steps_by_layout: dict[str, list[int]] = {}
    for pos, row in effective_batches(path).items():
        if pos != expected:
            raise HpcyuanError(f"{path}: no batch at consumed_samples {expected:,} (the next one logged is at "
                               f"{pos:,}): samples were skipped")
        expected += g
        if "skipped" in row:
            skipped.append(pos)
            continue
        if row["indices"] != sampler.global_batch(pos).tolist():
            raise HpcyuanError(f"{path}: the batch of step {row['step']} (consumed_samples {pos:,}) is not the "
                               f"sampler's batch for that position")
        samples += len(row["indices"])
        steps_by_layout.setdefault(row["layout"], []).append(row["step"])
    layouts = ", ".join(f"{layout} (steps {min(s)}-{max(s)})" for layout, s in steps_by_layout.items())
    return (f"{samples:,} samples in {expected // g - len(skipped)} batches, each batch the sampler's for its "
            f"position: none repeated or skipped" + (f", skipped by the spike guard: the batch(es) at consumed_samples "
            f"{', '.join(map(str, skipped))}" if skipped else "") + f"; trained by {layouts}")
