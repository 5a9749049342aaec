"""Run a script on N real ranks: `mpiexec -n N python script.py ARGS` with a hard timeout.

    from mpirun import run_ranks
    result = run_ranks(4, "comm_checks.py")      # scripts live in tests/mpi/scripts/
    assert result.returncode == 0, result.output

A job that outlives `timeout_s` is killed as a whole process group and reported as a failure (a
hang must fail the test, never block CI). Each launch costs ~3-6 s of torch imports on 2 cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpcyuan.runtime.launch import find_mpiexec

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class RankRun:
    returncode: int
    output: str
    """stdout and stderr of all ranks, merged."""
    seconds: float


def run_ranks(num_ranks: int, script: str, *args: str, timeout_s: float = 120.0) -> RankRun:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [find_mpiexec(), "-n", str(num_ranks), sys.executable, str(SCRIPTS / script), *args]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        output, _ = proc.communicate()
        raise AssertionError(f"mpiexec -n {num_ranks} {script} hung for {timeout_s:g} s:\n{output}") from None
    return RankRun(proc.returncode, output, time.perf_counter() - start)
