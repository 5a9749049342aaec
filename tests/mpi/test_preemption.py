"""A stop signal mid-run (what Slurm sends before the time limit or on preemption), with real ranks:
every rank agrees at the next step boundary, the job saves and exits 75 (requeue), and the same
command resumes: bit-identical on the same layout, within fp32 rounding on another one, every sample
trained exactly once (sample log).

    .venv/bin/python -m pytest tests/mpi/test_preemption.py -s
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from mpirun import REPO
from training_runs import COMMON, assert_bit_identical, check_samples, losses, train

from hpcyuan.runtime.signals import EXIT_REQUEUE


def train_until_signalled(run_dir, steps: int, pp: int, dp: int, after_step: int, signum: int) -> str:
    """`hpcyuan launch` a run and send `signum` to the launcher once it has logged `after_step`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "hpcyuan", "launch", "-n", str(pp * dp), "--", "train", "--config", "tiny",
               *COMMON, "--steps", str(steps), "--set", f"parallel.pp={pp}", "--set", f"parallel.dp={dp}",
               "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, deadline = [], time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {after_step:>{len(str(steps))}}/"):
            proc.send_signal(signum)
        assert time.monotonic() < deadline, "".join(lines)
    assert proc.wait() == EXIT_REQUEUE, "".join(lines)
    return "".join(lines)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum,resume", [(signal.SIGUSR2, (2, 2)), (signal.SIGTERM, (1, 2))],
                         ids=["USR2-same-layout", "TERM-to-pp1xdp2"])
def test_stop_signal_saves_exits_75_and_resumes(shakespeare_512, tmp_path, signum, resume):
    train(tmp_path / "once", 16, 2, 2)
    out = train_until_signalled(tmp_path / "run", 16, 2, 2, after_step=4, signum=signum)
    stopped = int(out.split("stopping at step ")[1].split()[0])
    assert 4 <= stopped < 16 and f"checkpoint {stopped} saved; exit 75" in out, out
    resumed = train(tmp_path / "run", 16, *resume)
    assert f"(step {stopped}, " in resumed.stdout
    a, b = losses(tmp_path / "once"), losses(tmp_path / "run")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    if resume == (2, 2):
        assert a == b
        detail = f"losses and {assert_bit_identical(tmp_path / 'once', tmp_path / 'run', 16)} tensors bit-identical"
    else:
        diff = max(abs(a[s] - b[s]) for s in a)
        assert diff <= 1e-5
        detail = f"max loss diff {diff:.1e}"
    print(f"{signal.Signals(signum).name} after step 4: saved at step {stopped}, exit 75, resumed on "
          f"pp{resume[0]}xdp{resume[1]}: {detail}; " + check_samples(tmp_path / "run", 16))
