"""Stop and resume through HDF5 checkpoints, end to end with `hpcyuan launch ... train`.

    .venv/bin/python -m pytest tests/mpi/test_resume.py -s

Same layout (dp = 2; pp = 2 x dp = 2): 4 steps, stop, resume to 8 is bit-identical to 8 steps in one
go: every logged loss equal as a float, every tensor of the final checkpoint (weights, fp32 master,
Adam m and v) equal bit for bit. Another layout (saved by pp = 2 x dp = 2, resumed by one process and
by pp = 1 x dp = 2): the losses after the resume stay within 1e-5 of the uninterrupted run (fp32;
only the order of sums changes). train.decay_steps is fixed so the learning-rate schedule does not
depend on --steps.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mpirun import REPO

from hpcyuan.checkpoint import CheckpointReader

COMMON = ["--config", "tiny", "--set", "train.decay_steps=8", "--set", "train.log_interval=1",
          "--set", "train.eval_interval=0"]


def train(run_dir, steps: int, pp: int, dp: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "hpcyuan", "launch", "-n", str(pp * dp), "--", "train", *COMMON,
               "--steps", str(steps), "--set", f"parallel.pp={pp}", "--set", f"parallel.dp={dp}",
               "--run-dir", str(run_dir)]
    run = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def final_state(run_dir) -> dict:
    with CheckpointReader(run_dir / "checkpoints" / "step_00000008") as reader:
        return {(kind, name): reader.read_tensor(kind, name)
                for kind in ("weight", "master", "exp_avg", "exp_avg_sq") for name in reader.names(kind)}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pp,dp", [(1, 2), (2, 2)])
def test_same_layout_resume_is_bit_identical(shakespeare_512, tmp_path, pp, dp):
    train(tmp_path / "once", 8, pp, dp)
    train(tmp_path / "twice", 4, pp, dp)
    resumed = train(tmp_path / "twice", 8, pp, dp)
    assert "resumed from" in resumed.stdout and "(step 4, 32 samples)" in resumed.stdout
    assert losses(tmp_path / "once") == losses(tmp_path / "twice")  # exact float equality, steps 1-8
    once, twice = final_state(tmp_path / "once"), final_state(tmp_path / "twice")
    assert once.keys() == twice.keys() and all(np.array_equal(once[k], twice[k]) for k in once)
    print(f"pp={pp} x dp={dp}: 8 losses and {len(once)} tensors bit-identical after stop at step 4 and resume")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pp,dp", [(1, 1), (1, 2)])
def test_resume_on_another_layout(shakespeare_512, tmp_path, pp, dp):
    train(tmp_path / "once", 8, 2, 2)
    train(tmp_path / "moved", 4, 2, 2)
    resumed = train(tmp_path / "moved", 8, pp, dp)
    assert "written by pp 2 x dp 2" in resumed.stdout
    a, b = losses(tmp_path / "once"), losses(tmp_path / "moved")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"saved on pp=2 x dp=2, resumed on pp={pp} x dp={dp}: max loss diff over 8 steps {diff:.2e}")
    assert all(a[s] == b[s] for s in range(1, 5)) and diff <= 1e-5


@pytest.mark.timeout(300)
def test_checkpoint_of_another_model_is_refused(shakespeare_512, tmp_path):
    train(tmp_path / "run", 2, 1, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "hpcyuan", "train", *COMMON, "--steps", "4", "--set", "model.num_heads=2",
                          "--run-dir", str(tmp_path / "run")], cwd=REPO, env=env, text=True, capture_output=True,
                         timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "holds another model" in run.stderr and "model.num_heads = 4 there, 2 here" in run.stderr
    assert "Traceback" not in run.stderr
