"""`hpcyuan launch -n N -- train` (dp = 2; pp = 2 x dp = 2) against `hpcyuan train` on one process,
end to end.

    .venv/bin/python -m pytest tests/mpi/test_train_launch.py -s

The same command line users run: metrics written by rank 0 only, progress printed once, and the
logged losses (train and validation) of the runs equal within 1e-5 (fp32; the layout changes only
the order of gradient sums). A layout that does not fit the ranks fails with one line, printed
once, exit 2.
"""

import json
import os
import subprocess
import sys

import pytest

from mpirun import REPO

STEPS = 6
COMMON = ["--config", "tiny", "--steps", str(STEPS), "--set", "train.log_interval=1"]


def hpcyuan(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hpcyuan", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout_s)


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"] + [r["val_loss"] for r in rows if r["kind"] == "eval"]


@pytest.fixture(scope="module")
def one_process(shakespeare_512, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    single = hpcyuan("train", *COMMON, "--set", "parallel.dp=1", "--run-dir", str(run_dir))
    assert single.returncode == 0, single.stderr
    return losses(run_dir)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("pp,dp", [(1, 2), (2, 2)])
def test_ranks_train_like_one_process(one_process, tmp_path, pp, dp):
    run = hpcyuan("launch", "-n", str(pp * dp), "--", "train", *COMMON, "--set", f"parallel.pp={pp}",
                  "--set", f"parallel.dp={dp}", "--run-dir", str(tmp_path / "run"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{pp * dp} ranks (pp {pp} x dp {dp}, ZeRO-1" in run.stdout
    assert run.stdout.count(f"step {STEPS}/{STEPS}") == 1, run.stdout  # rank 0 alone prints
    got = losses(tmp_path / "run")
    diff = max(abs(x - y) for x, y in zip(one_process, got))
    print(f"pp={pp} x dp={dp} vs one process, {len(got)} logged losses: max diff {diff:.2e}")
    assert len(got) == len(one_process) == STEPS + 1 and diff <= 1e-5
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == \
        ["attempts.jsonl", "checkpoints", "config.toml", "loss.png", "metrics.jsonl", "summary.json", "timeline.json",
         "timeline.png"]
    trace = json.loads((tmp_path / "run" / "timeline.json").read_text())["traceEvents"]
    assert {e["tid"] for e in trace} == set(range(pp))  # one row per pipeline stage
    assert "timeline of step 3" in run.stdout


@pytest.mark.timeout(120)
def test_layout_that_does_not_fit_the_ranks_fails_once(shakespeare_512, tmp_path):
    run = hpcyuan("launch", "-n", "2", "--", "train", "--config", "tiny", "--set", "parallel.dp=4",
                  "--run-dir", str(tmp_path / "bad"))
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if "parallel.pp (1) x parallel.dp (4)" in line]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr
