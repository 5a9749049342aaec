"""Start hpcyuan on N local ranks with mpiexec, and tell how the current process was started.

    from hpcyuan.runtime.launch import launch
    launch(4, ["train", "--config", "tiny"])   # runs: mpiexec -n 4 <python> -m hpcyuan train ...

(`hpcyuan launch -n 4 -- train --config tiny` calls this.) The mpiexec next to this Python (the
venv's, from the `mpich` wheel) is preferred over PATH: a system Open MPI `mpiexec` cannot start
ranks that load the wheel's MPICH. OMP_NUM_THREADS defaults to cores // ranks so N ranks do not
oversubscribe the CPU with N x cores threads. Tested by tests/unit/test_runtime_launch.py; tests/mpi
starts real ranks through the same find_mpiexec.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.env import JobEnv
from hpcyuan.runtime.signals import STOP_SIGNALS


def find_mpiexec(python: str = sys.executable) -> str:
    """The venv's mpiexec, else the first on PATH; a one-line error if there is none."""
    beside = Path(python).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise HpcyuanError("no mpiexec found next to this Python or on PATH: "
                           "install one with `pip install mpich` (into this venv)")
    return found


def threads_per_rank(num_ranks: int, environ: Mapping[str, str], cores: int | None = None) -> str:
    """OMP_NUM_THREADS for each rank: the user's if set, else cores // ranks (at least 1)."""
    if environ.get("OMP_NUM_THREADS"):
        return environ["OMP_NUM_THREADS"]
    cores = cores or len(os.sched_getaffinity(0))
    return str(max(1, cores // num_ranks))


def mpiexec_command(mpiexec: str, num_ranks: int, hpcyuan_args: Sequence[str],
                    python: str = sys.executable) -> list[str]:
    """The command line: `mpiexec -n N python -m hpcyuan ARGS`."""
    if num_ranks < 1:
        raise HpcyuanError(f"launch -n {num_ranks}: need at least one rank")
    return [mpiexec, "-n", str(num_ranks), python, "-m", "hpcyuan", *hpcyuan_args]


def launch(num_ranks: int, hpcyuan_args: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run hpcyuan on `num_ranks` local ranks; returns mpiexec's exit status (a rank's abort code:
    1 crash, 2 user error, 3 collective timeout: runtime/watchdog.py; 75 stopped by a
    signal after saving, requeue: runtime/signals.py)."""
    command = mpiexec_command(find_mpiexec(), num_ranks, hpcyuan_args)  # checks num_ranks first
    env = dict(os.environ if environ is None else environ)
    env["OMP_NUM_THREADS"] = threads_per_rank(num_ranks, env)
    proc = subprocess.Popen(command, env=env)
    # A stop signal for this process goes to the ranks as SIGTERM: MPICH's mpiexec forwards SIGTERM
    # to every rank, but dies of SIGUSR2 itself (measured), taking the ranks down unsaved.
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    return proc.wait()


def detect(environ: Mapping[str, str] | None = None) -> JobEnv:
    """How this process was started ("mpi", "slurm" or "single"), from the launcher's variables;
    `hpcyuan train` uses it to decide whether to build the MPI runtime."""
    return JobEnv.from_environ(os.environ if environ is None else environ)
