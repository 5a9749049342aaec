"""Failure behaviour with real ranks (scripts/failures.py): no hang, the error printed once, and
the documented exit code (hpcyuan/runtime/watchdog.py: 1 crash, 2 user error, 3 collective timeout).

    .venv/bin/python -m pytest tests/mpi/test_watchdog.py
"""

import re

import pytest
from mpirun import run_ranks

# The stalled rank sleeps 60 s; the job must end within start-up (<= ~15 s on a busy 2-core
# machine) + the 3 s deadline + the abort, i.e. well before the stall would end on its own.
ENDS_WITHIN_S = 40


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_ranks", [2, 4])
def test_stalled_rank_turns_into_a_timeout_that_ends_the_job(num_ranks):
    result = run_ranks(num_ranks, "failures.py", "stall")
    assert result.returncode == 3, result.output
    assert result.seconds < ENDS_WITHIN_S, result.output
    lines = re.findall(r"hpcyuan: rank (\d+): all_reduce on communicator 'dp group of stage 0' "
                       r"did not finish within 3 s \(waited (\d+\.\d) s\)", result.output)
    assert lines, result.output
    stalled = str(num_ranks - 1)
    assert all(rank != stalled and 3.0 <= float(waited) < 10 for rank, waited in lines), result.output
    ranks = [rank for rank, _ in lines]
    assert len(ranks) == len(set(ranks)), f"a rank printed its timeout twice:\n{result.output}"
    assert "finished" not in result.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_ranks, mode, code, message", [
    (2, "crash", 1, "ValueError: boom from rank 1"),
    (4, "user", 2, "hpcyuan: rank 3/4: bad input seen by rank 3"),
])
def test_raising_rank_ends_the_job_with_its_message_once(num_ranks, mode, code, message):
    result = run_ranks(num_ranks, "failures.py", mode)
    assert result.returncode == code, result.output
    assert result.seconds < ENDS_WITHIN_S, result.output  # the others wait with a 60 s deadline
    assert result.output.count(message) == 1, result.output
    assert ("Traceback" in result.output) == (mode == "crash"), result.output
    assert "finished" not in result.output
