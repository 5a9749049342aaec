"""JobEnv from launcher variables (Slurm, MPICH Hydra, Open MPI), and squeue end-time parsing."""

import datetime
import subprocess

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.env import JobEnv, parse_squeue_end_time, slurm_job_end_time

SRUN = {  # task 5 of `srun -N3 -n8` with the default block distribution: 3,3,2 tasks per node
    "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_NODEID": "1",
    "SLURM_TASKS_PER_NODE": "3(x2),2", "SLURM_JOB_NODELIST": "n[01-02],gpu7",
    "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "2",
}
HYDRA = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4"}
OMPI = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}


def test_single_process():
    assert JobEnv.from_environ({}) == JobEnv()
    assert JobEnv().launcher == "single" and not JobEnv().is_distributed


def test_srun():
    env = JobEnv.from_environ(SRUN)
    assert (env.rank, env.world_size, env.local_rank, env.local_size) == (5, 8, 2, 3)
    assert env.node_list == ("n01", "n02", "gpu7")
    assert (env.job_id, env.restart_count, env.launcher, env.end_time) == ("4242", 2, "slurm", None)


def test_ntasks_per_node_wins_over_the_per_node_list():
    env = JobEnv.from_environ({**SRUN, "SLURM_NTASKS_PER_NODE": "4", "SLURM_TASKS_PER_NODE": "4(x2)"})
    assert env.local_size == 4


def test_hydra():
    env = JobEnv.from_environ(HYDRA)
    assert (env.rank, env.world_size, env.local_rank, env.local_size, env.launcher) == (3, 4, 3, 4, "mpi")
    assert env.job_id is None and env.node_list == ()


def test_open_mpi():
    env = JobEnv.from_environ(OMPI)
    assert (env.rank, env.world_size, env.local_rank, env.local_size, env.launcher) == (1, 2, 0, 1, "mpi")


def test_mpiexec_inside_sbatch_takes_the_rank_from_mpiexec():
    # The batch step's SLURM_PROCID=0 is inherited by every rank mpiexec starts: it must lose.
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7",
             "SLURM_JOB_NODELIST": "n1"}
    env = JobEnv.from_environ({**batch, **HYDRA})
    assert (env.rank, env.world_size, env.launcher) == (3, 4, "mpi")
    assert (env.job_id, env.node_list, env.in_slurm_job) == ("7", ("n1",), True)


def test_missing_local_variables_default_sensibly():
    env = JobEnv.from_environ({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert (env.local_rank, env.local_size) == (1, 2)


@pytest.mark.parametrize("environ, match", [
    ({"PMI_RANK": "x", "PMI_SIZE": "2"}, "PMI_RANK='x'"),
    ({"PMI_RANK": "0"}, "PMI_SIZE is not set"),
    ({"PMI_RANK": "4", "PMI_SIZE": "4"}, "rank 4 of 4"),
])
def test_bad_environments_are_one_line_errors(environ, match):
    with pytest.raises(HpcyuanError, match=match):
        JobEnv.from_environ(environ)


def test_end_time_is_kept_and_env_is_frozen():
    env = JobEnv.from_environ(SRUN, end_time=1.5e9)
    assert env.end_time == 1.5e9
    with pytest.raises(AttributeError):
        env.rank = 0


def test_parse_squeue_end_time():
    utc = datetime.timezone.utc
    assert parse_squeue_end_time("2026-11-23T14:05:00\n", tz=utc) == datetime.datetime(
        2026, 11, 23, 14, 5, tzinfo=utc).timestamp()
    for text in ("N/A", "Unknown", "NONE", ""):
        assert parse_squeue_end_time(text) is None
    with pytest.raises(HpcyuanError, match="squeue end time"):
        parse_squeue_end_time("tomorrow")


def test_slurm_job_end_time_asks_squeue_once():
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="2026-01-02T03:04:05\n", stderr="")

    stamp = slurm_job_end_time("99", run=fake_run)
    assert calls == [["squeue", "-h", "-j", "99", "-o", "%e"]]
    assert stamp == datetime.datetime(2026, 1, 2, 3, 4, 5).timestamp()


def test_slurm_job_end_time_without_squeue_is_none():
    def missing(cmd, **kw):
        raise FileNotFoundError(cmd[0])

    assert slurm_job_end_time("1", run=missing) is None
    assert slurm_job_end_time("1", run=lambda c, **k: subprocess.CompletedProcess(c, 1, "", "x")) is None
