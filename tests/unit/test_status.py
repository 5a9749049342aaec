"""`hpcyuan status`: the attempts a run's trainings recorded, one of them killed mid-save."""

import os
import subprocess
import sys
from pathlib import Path

from hpcyuan.attempts import read_attempts
from hpcyuan.status import status_report

REPO = Path(__file__).resolve().parents[2]


def train(run_dir, steps, fault=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPCYUAN_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "hpcyuan", "train", "--config", "tiny", "--steps", str(steps),
                           "--run-dir", str(run_dir), "--set", "checkpoint.interval=2", "--set", "train.eval_interval=0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_status_shows_each_attempt_and_the_checkpoint_to_resume_from(shakespeare_512, tmp_path):
    run = tmp_path / "run"
    assert train(run, 4).returncode == 0
    killed = train(run, 8, fault="kill-in-save:step=6:rank=0")
    assert killed.returncode == -9, killed.stderr
    attempts = read_attempts(run / "attempts.jsonl")
    assert [(a.from_step, a.to_step, a.outcome) for a in attempts] == [(0, 4, "done"), (4, None, None)]
    report = status_report(run)
    print(report)
    lines = report.splitlines()
    assert "2 attempts, 1 restart" in lines[0]
    assert "latest good checkpoint: step 4" in lines[1] and "step_00000006.tmp" in lines[1]
    assert lines[3].endswith("done") and "died (no end recorded" in lines[4]
