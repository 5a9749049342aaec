"""Where this process sits in the job: a frozen `JobEnv` read from ONE table of launcher variables.

    from hpcyuan.runtime.env import JobEnv
    env = JobEnv.current()          # or JobEnv.from_environ({...}) in tests
    print(env.rank, env.world_size, env.launcher)

Sources, first match wins (see `_SOURCES` and docs/runtime.md):
  1. Open MPI (`mpirun`/`prterun`)        OMPI_COMM_WORLD_RANK, ...
  2. MPICH Hydra `mpiexec`, `srun --mpi=pmi2`  PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, ...
  3. Slurm `srun` without an MPI plugin    SLURM_PROCID, SLURM_NTASKS, ...
  4. nothing: a single process (rank 0 of 1).
An MPI launcher's variables win over Slurm's because `mpiexec` inside an `sbatch` script starts its
ranks with the batch step's SLURM_PROCID=0 inherited: only the launcher that started this very
process knows its rank. Job facts (id, node list, restart count) always come from Slurm if present.

The job's end time is not exported by Slurm; `slurm_job_end_time(job_id)` asks `squeue` (one call:
make it on one rank and broadcast). Tested by tests/unit/test_runtime_env.py.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.hostlist import expand_hostlist, expand_tasks_per_node

# The one table: launcher -> JobEnv field -> variable. Fields a launcher does not export are absent.
_SOURCES: dict[str, dict[str, str]] = {
    "openmpi": {
        "rank": "OMPI_COMM_WORLD_RANK",
        "world_size": "OMPI_COMM_WORLD_SIZE",
        "local_rank": "OMPI_COMM_WORLD_LOCAL_RANK",
        "local_size": "OMPI_COMM_WORLD_LOCAL_SIZE",
    },
    "mpich": {
        "rank": "PMI_RANK",
        "world_size": "PMI_SIZE",
        "local_rank": "MPI_LOCALRANKID",
        "local_size": "MPI_LOCALNRANKS",
    },
    "slurm": {
        "rank": "SLURM_PROCID",
        "world_size": "SLURM_NTASKS",
        "local_rank": "SLURM_LOCALID",
        "local_size": "SLURM_NTASKS_PER_NODE",  # only with --ntasks-per-node; else from the next two
        "tasks_per_node": "SLURM_TASKS_PER_NODE",  # "2(x3),1"
        "node_id": "SLURM_NODEID",
    },
}
# Facts about the Slurm job itself, whoever started the ranks.
_SLURM_JOB = {
    "job_id": "SLURM_JOB_ID",
    "node_list": "SLURM_JOB_NODELIST",
    "restart_count": "SLURM_RESTART_COUNT",
}
_LAUNCHER_OF_SOURCE = {"openmpi": "mpi", "mpich": "mpi", "slurm": "slurm"}


@dataclass(frozen=True)
class JobEnv:
    """This process's place in the job. Built once at start-up and passed explicitly."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    """Rank among the processes on this node."""
    local_size: int = 1
    """Processes on this node."""
    node_list: tuple[str, ...] = ()
    """The job's nodes, expanded from SLURM_JOB_NODELIST; () outside Slurm."""
    job_id: str | None = None
    """SLURM_JOB_ID; None outside Slurm."""
    restart_count: int = 0
    """SLURM_RESTART_COUNT: how many times this job was requeued (0 on the first run)."""
    end_time: float | None = None
    """Epoch seconds when the scheduler ends the job; None if unknown (see slurm_job_end_time)."""
    launcher: str = "single"
    """"mpi" (mpiexec/mpirun or srun with a PMI plugin), "slurm" (plain srun) or "single"."""

    @classmethod
    def current(cls) -> "JobEnv":
        """From this process's environment (does not call squeue)."""
        return cls.from_environ(os.environ)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], end_time: float | None = None) -> "JobEnv":
        """Pure: the same mapping always gives the same JobEnv."""
        source = next((name for name, table in _SOURCES.items() if table["rank"] in environ), None)
        job = _slurm_job_fields(environ)
        if source is None:
            return cls(end_time=end_time, **job)
        table = _SOURCES[source]
        rank = _int(environ, table["rank"])
        world_size = _int(environ, table["world_size"])
        local_rank = _int(environ, table["local_rank"], default=rank)
        local_size = _local_size(environ, table, default=world_size)
        if not 0 <= rank < world_size or not 0 <= local_rank < local_size:
            raise HpcyuanError(f"inconsistent {source} environment: rank {rank} of {world_size}, "
                               f"local rank {local_rank} of {local_size}")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, local_size=local_size,
                   end_time=end_time, launcher=_LAUNCHER_OF_SOURCE[source], **job)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def in_slurm_job(self) -> bool:
        return self.job_id is not None


def _slurm_job_fields(environ: Mapping[str, str]) -> dict:
    nodes = environ.get(_SLURM_JOB["node_list"], "")
    return {
        "job_id": environ.get(_SLURM_JOB["job_id"]) or None,
        "node_list": tuple(expand_hostlist(nodes)) if nodes else (),
        "restart_count": _int(environ, _SLURM_JOB["restart_count"], default=0),
    }


def _local_size(environ: Mapping[str, str], table: Mapping[str, str], default: int) -> int:
    """Slurm exports per-node counts as a list; pick this node's entry by SLURM_NODEID."""
    if table["local_size"] in environ:
        return _int(environ, table["local_size"])
    per_node = environ.get(table.get("tasks_per_node", ""), "")
    if per_node:
        counts = expand_tasks_per_node(per_node)
        node = _int(environ, table["node_id"], default=0)
        if node < len(counts):
            return counts[node]
    return default


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None:
        if default is None:
            raise HpcyuanError(f"environment variable {name} is not set (needed with the other launcher variables)")
        return default
    try:
        return int(text)
    except ValueError:
        raise HpcyuanError(f"environment variable {name}={text!r}: expected an integer") from None


# ---------------------------------------------------------------------------------------------
# End time from squeue


def parse_squeue_end_time(text: str, tz: datetime.tzinfo | None = None) -> float | None:
    """`squeue -h -o %e` output ("2026-11-23T14:05:00", in the controller's local time) -> epoch
    seconds; None for "N/A", "Unknown", "NONE" or empty (no limit known)."""
    text = text.strip()
    if text in ("", "N/A", "Unknown", "NONE", "None"):
        return None
    try:
        stamp = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise HpcyuanError(f"squeue end time '{text}': expected YYYY-MM-DDTHH:MM:SS") from None
    if tz is not None:
        stamp = stamp.replace(tzinfo=tz)
    return stamp.timestamp()  # naive stamps are read in this machine's local time, as squeue prints


def slurm_job_end_time(job_id: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                       timeout_s: float = 30.0) -> float | None:
    """Ask squeue when job `job_id` will be ended (backfill may have shortened --time to --time-min).
    None when squeue is missing, fails or knows no limit: callers then rely on the signal alone."""
    try:
        done = run(["squeue", "-h", "-j", str(job_id), "-o", "%e"], capture_output=True, text=True,
                   timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.strip().splitlines()
    return parse_squeue_end_time(lines[0]) if lines else None
