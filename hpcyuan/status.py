"""`hpcyuan status RUN_DIR`: where a run stands, across all the jobs that trained it.

    print(status_report(Path("runs/demo")))

Reads what the run itself wrote (config.toml, attempts.jsonl, metrics.jsonl, the checkpoints) and,
for attempts without an end whose Slurm job is still known to `squeue`, the job's live state.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from hpcyuan.attempts import Attempt, read_attempts
from hpcyuan.checkpoint.reader import CheckpointReader, latest_good
from hpcyuan.checkpoint.saver import checkpoint_root
from hpcyuan.config import load_config
from hpcyuan.errors import HpcyuanError


def status_report(run_dir: Path) -> str:
    if not (run_dir / "config.toml").is_file():
        raise HpcyuanError(f"{run_dir} is not a run directory (no config.toml): name a train.run_dir")
    cfg = load_config(str(run_dir / "config.toml"))
    attempts = read_attempts(run_dir / "attempts.jsonl") if (run_dir / "attempts.jsonl").is_file() else []
    step, samples = _progress(run_dir / "metrics.jsonl")
    finished = bool(attempts) and attempts[-1].outcome == "done" and step >= cfg.train.steps
    restarts = max(0, len(attempts) - 1)
    lines = [f"run {run_dir} ({cfg.name}): trained to step {step:,} of {cfg.train.steps:,}"
             f"{', done' if finished else ''} | {samples:,} samples | {len(attempts)} attempt"
             f"{'s' * (len(attempts) != 1)}, {restarts} restart{'s' * (restarts != 1)}"]
    lines.append(_checkpoint_line(checkpoint_root(cfg)))
    if attempts:
        live = _squeue_states([a.job_id for a in attempts if a.job_id and a.outcome is None])
        lines.append(f"{'#':>3}  {'started':19}  {'job':>10}  {'restart':>7}  {'nodes':>5}  {'layout':9}  "
                     f"{'steps':>13}  outcome")
        for i, a in enumerate(attempts, 1):
            lines.append(f"{i:>3}  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(a.started))}  "
                         f"{a.job_id or '-':>10}  {a.restart:>7}  {a.nodes:>5}  {a.layout:9}  "
                         f"{_steps(a):>13}  {_outcome(a, live)}")
    return "\n".join(lines)


def _progress(metrics: Path) -> tuple[int, int]:
    step = samples = 0
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "train":
                step, samples = row["step"], row["consumed_samples"]
    return step, samples


def _checkpoint_line(root: Path) -> str:
    if not root.is_dir():
        return f"no checkpoint yet ({root})"
    path, skipped = latest_good(root)
    if path is None:
        return f"no good checkpoint in {root}" + "".join(f"; {m}" for m in skipped)
    with CheckpointReader(path) as reader:
        layout = reader.meta["layout"]
    return (f"latest good checkpoint: step {reader.meta['step']:,} ({path}, written by pp {layout['pp']} x "
            f"dp {layout['dp']} {layout['layers_per_stage']}): the next start resumes from it"
            + "".join(f"; {m}" for m in skipped))


def _steps(a: Attempt) -> str:
    return f"{a.from_step} -> {a.to_step if a.to_step is not None else '?'}"


def _outcome(a: Attempt, live: dict[str, str]) -> str:
    if a.outcome is not None:
        return a.outcome
    if a.job_id in live:
        return f"no end yet: job {live[a.job_id].lower()}"
    return "died (no end recorded: crashed, killed, or out of time)"


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} of those jobs squeue still knows; {} without Slurm."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if " " in line)
