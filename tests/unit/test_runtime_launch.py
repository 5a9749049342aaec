"""launch.py without starting anything: the command line, threads per rank, finding mpiexec."""

import stat

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.launch import detect, find_mpiexec, mpiexec_command, threads_per_rank


def test_command_line():
    assert mpiexec_command("/v/bin/mpiexec", 4, ["train", "--config", "tiny"], python="/v/bin/python") == [
        "/v/bin/mpiexec", "-n", "4", "/v/bin/python", "-m", "hpcyuan", "train", "--config", "tiny"]
    with pytest.raises(HpcyuanError, match="at least one rank"):
        mpiexec_command("mpiexec", 0, [])


def test_threads_per_rank():
    assert threads_per_rank(4, {}, cores=8) == "2"
    assert threads_per_rank(4, {}, cores=2) == "1"  # never 0
    assert threads_per_rank(4, {"OMP_NUM_THREADS": "3"}, cores=2) == "3"  # the user's choice wins


def _executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_mpiexec_beside_python_wins_over_path(tmp_path, monkeypatch):
    venv, other = tmp_path / "venv", tmp_path / "other"
    venv.mkdir(), other.mkdir()
    beside = _executable(venv / "mpiexec")
    _executable(other / "mpiexec")
    monkeypatch.setenv("PATH", str(other))
    assert find_mpiexec(str(venv / "python")) == str(beside)
    assert find_mpiexec(str(tmp_path / "python")) == str(other / "mpiexec")


def test_no_mpiexec_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HpcyuanError, match="no mpiexec found.*pip install mpich"):
        find_mpiexec(str(tmp_path / "python"))


def test_detect():
    assert detect({"PMI_RANK": "1", "PMI_SIZE": "2"}).launcher == "mpi"
    assert detect({}).launcher == "single"
    assert detect().world_size >= 1  # this very process
