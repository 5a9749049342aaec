"""`hpcyuan launch -n pp*dp -- train` runs for the checkpoint tests, and what they left behind.

    run = train(run_dir, steps=8, pp=2, dp=2)                  # asserts exit status 0
    run = train(run_dir, 8, 1, 2, "--set", "...", expect=2)    # or the status a fault must give (None: any failure)
    losses(run_dir) -> {step: loss};  final_state(run_dir, 8) -> {(kind, name): array}

Every run uses the tiny presets with train.decay_steps fixed, so the learning-rate schedule does not
depend on --steps, and the sample log on (samples.jsonl), so a test can check every sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from mpirun import REPO

from hpcyuan.checkpoint import CheckpointReader
from hpcyuan.config import load_config
from hpcyuan.data import GlobalSampler, TokenDataset
from hpcyuan.data.samplelog import check_sample_log, effective_batches

COMMON = ["--set", "train.decay_steps=8", "--set", "train.log_interval=1", "--set", "train.eval_interval=0",
          "--set", "train.sample_log=true"]


def train(run_dir, steps: int, pp: int, dp: int, *extra: str, config: str = "tiny", expect: int | None = 0,
          env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    command = [sys.executable, "-m", "hpcyuan", "launch", "-n", str(pp * dp), "--", "train", "--config", config,
               *COMMON, "--steps", str(steps), "--set", f"parallel.pp={pp}", "--set", f"parallel.dp={dp}",
               "--run-dir", str(run_dir), *extra]
    run = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True, timeout=timeout)
    ok = run.returncode != 0 if expect is None else run.returncode == expect
    assert ok, f"exit {run.returncode}, expected {expect or 'a failure'}\n{run.stdout}{run.stderr}"
    return run


def losses(run_dir) -> dict[int, float]:
    """{step: loss} of the run's log; a step logged twice (trained again after a resume) keeps its
    last value, the one the final model went through."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def final_state(run_dir, step: int) -> dict:
    with CheckpointReader(run_dir / "checkpoints" / f"step_{step:08d}") as reader:
        return {(kind, name): reader.read_tensor(kind, name)
                for kind in ("weight", "master", "exp_avg", "exp_avg_sq") for name in reader.names(kind)}


def assert_bit_identical(a_dir, b_dir, step: int) -> int:
    a, b = final_state(a_dir, step), final_state(b_dir, step)
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    return len(a)


def check_samples(run_dir, steps: int, config: str = "tiny", skipped: tuple[int, ...] = ()) -> str:
    """The sample log of a finished run: the effective batches (last line per position) are exactly
    the global sampler's batches 0, G, 2G, ... (each sample once, in order, whatever layouts and
    restarts trained them), with only `skipped` positions passed over. Returns a one-line summary."""
    cfg = load_config(config)
    g = cfg.train.global_batch_size
    sampler = GlobalSampler(TokenDataset(REPO / cfg.data.dir, "train", cfg.model.seq_length).num_samples, g,
                            cfg.data.seed)
    summary = check_sample_log(run_dir / "samples.jsonl", sampler)
    batches = effective_batches(run_dir / "samples.jsonl")
    assert list(batches) == list(range(0, g * (steps + len(skipped)), g))
    assert [pos for pos, row in batches.items() if "skipped" in row] == list(skipped)
    return summary
