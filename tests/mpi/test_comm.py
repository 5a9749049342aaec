"""Every Comm operation and the pp x dp groups with real ranks (scripts/comm_checks.py).

    .venv/bin/python -m pytest tests/mpi/test_comm.py
At 4 ranks the script covers (pp, dp) = (1, 4), (2, 2) and (4, 1); at 1 and 2 ranks the same
checks hold with the grids that fit.
"""

import pytest
from mpirun import run_ranks


@pytest.mark.timeout(180)
@pytest.mark.parametrize("num_ranks", [1, 2, 4])
def test_comm_ops_match_local_references(num_ranks):
    result = run_ranks(num_ranks, "comm_checks.py")
    assert result.returncode == 0, result.output
    for rank in range(num_ranks):
        assert result.output.count(f"rank {rank}: all checks passed") == 1, result.output
