"""Polite waiting with a deadline, and the job-ending top-level handler.

Every blocking MPI wait in hpcyuan goes through `PoliteWait.wait(request, ...)`:
  * it does not busy-poll: MPICH's blocking calls spin on a core, and on an oversubscribed CPU node a
    waiting rank then halves a co-located rank's compute (measured: docs/runtime.md,
    benchmarks/mpi_wait.py). We test the request in a short spin, then sleep with exponential
    backoff capped at 1 ms between tests;
  * it has a deadline: a wait longer than `timeout_s` raises `CollectiveTimeout`, naming this rank,
    the operation, the group and the seconds waited.

`run_main(fn)` runs a rank's main function; when it raises, that rank prints its error once and
calls MPI_Abort, so the whole job ends (no rank hangs) with a documented exit code:
    EXIT_CRASH (1)  an unexpected exception (traceback printed)
    EXIT_USER_ERROR (2)  an HpcyuanError (one line, as the CLI prints it)
    EXIT_COLLECTIVE_TIMEOUT (3)  a collective missed its deadline (one line)
Tested with real ranks in tests/mpi/test_watchdog.py.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable, TypeVar

from hpcyuan.errors import EveryRankError, HpcyuanError

EXIT_CRASH = 1
EXIT_USER_ERROR = 2
EXIT_COLLECTIVE_TIMEOUT = 3

DEFAULT_TIMEOUT_S = 600.0
"""Deadline of one wait. Generous: the first collective waits for the slowest rank's start-up."""

T = TypeVar("T")


class CollectiveTimeout(HpcyuanError):
    """A wait on a collective or point-to-point operation exceeded its deadline."""

    def __init__(self, rank: int, op: str, group: str, waited_s: float, timeout_s: float):
        self.rank, self.op, self.group, self.waited_s, self.timeout_s = rank, op, group, waited_s, timeout_s
        super().__init__(
            f"rank {rank}: {op} on communicator '{group}' did not finish within {timeout_s:g} s "
            f"(waited {waited_s:.1f} s): a peer rank is stalled, dead or never called it")


class PoliteWait:
    """Test a request in a spin, then sleep with exponential backoff; enforce a deadline.

    The spin keeps short collectives fast: an all-reduce runs in rounds, and a rank asleep when
    its peer's message lands delays every later round (a sleep on Linux lasts >= ~60 us). With
    `adaptive`, the spin tracks recent waits: it lasts twice the moving average of how long the
    last waits took (each clipped to `max_spin_s`), so back-to-back small collectives spin through
    and a rank that waits seconds for a computing peer spins at most `max_spin_s`, then costs
    ~2% of a core. Measured in benchmarks/mpi_wait.py (figures in docs/runtime.md).
    """

    def __init__(self, min_spin_s: float = 50e-6, max_spin_s: float = 2e-3, adaptive: bool = True,
                 first_sleep_s: float = 20e-6, max_sleep_s: float = 1e-3):
        self.min_spin_s, self.max_spin_s, self.adaptive = min_spin_s, max_spin_s, adaptive
        self.first_sleep_s, self.max_sleep_s = first_sleep_s, max_sleep_s
        self.spin_s = min_spin_s
        self._avg_wait_s = min_spin_s / 2

    def wait(self, request, *, rank: int, op: str, group: str, timeout_s: float) -> float:
        """Block until `request.Test()` is true; return the seconds waited."""
        start = time.perf_counter()
        spin_until = start + self.spin_s
        done = request.Test()
        while not done and time.perf_counter() < spin_until:  # spin: no sleep for fast completions
            os.sched_yield()  # oversubscribed: let a peer rank that shares this core run its round
            done = request.Test()
        sleep_s = self.first_sleep_s
        while not done:
            waited = time.perf_counter() - start
            if waited > timeout_s:
                raise CollectiveTimeout(rank, op, group, waited, timeout_s)
            time.sleep(sleep_s)
            sleep_s = min(2.0 * sleep_s, self.max_sleep_s)
            done = request.Test()
        waited = time.perf_counter() - start
        self._adapt(waited)
        return waited

    def _adapt(self, waited: float) -> None:
        if not self.adaptive:
            return
        self._avg_wait_s = 0.8 * self._avg_wait_s + 0.2 * min(waited, self.max_spin_s)
        self.spin_s = min(self.max_spin_s, max(self.min_spin_s, 2.0 * self._avg_wait_s))


ABORT_GRACE_S = 1.0
"""Seconds a failing rank waits after printing its error before it aborts the job."""


def run_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn(*args, **kwargs)` as a rank's main; on any exception print it once from this rank and
    end the whole MPI job with MPI_Abort and the exit code of the error's kind (module docstring)."""
    try:
        return fn(*args, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        code = exc.code if isinstance(exc.code, int) else EXIT_CRASH
        _report(str(exc.code) if not isinstance(exc.code, int) else "", code)
    except CollectiveTimeout as exc:
        _report(str(exc), EXIT_COLLECTIVE_TIMEOUT, name_rank=False)  # its message names the rank
    except HpcyuanError as exc:
        quiet = isinstance(exc, EveryRankError) and _world_rank_size()[0] != 0  # rank 0 says it for all
        _report("" if quiet else str(exc), EXIT_USER_ERROR)
    except BaseException:  # noqa: BLE001 - a crash on one rank must end every rank, whatever it is
        _report("raised:\n" + traceback.format_exc().rstrip(), EXIT_CRASH)
    raise AssertionError("unreachable: _report ends the process")


def _report(message: str, code: int, name_rank: bool = True) -> None:
    rank, size = _world_rank_size()
    if message:
        if not name_rank:  # the message names the rank itself
            prefix = "hpcyuan: "
        else:  # in a job the failing rank, on one process the CLI's "hpcyuan: error: ..."
            prefix = f"hpcyuan: rank {rank}/{size}: " if size > 1 else "hpcyuan: error: "
        # One write, so lines of different ranks do not interleave inside this message.
        sys.stderr.write(prefix + message + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    # mpiexec forwards rank output asynchronously and MPI_Abort kills the job at once: without a
    # moment's grace the one message that explains the failure can be lost (seen with MPICH Hydra).
    time.sleep(ABORT_GRACE_S)
    abort_job(code)


def abort_job(code: int) -> None:
    """End every rank: MPI_Abort when MPI is running with more than one rank, else a plain exit."""
    mpi = _mpi_if_initialized()
    if mpi is not None and mpi.COMM_WORLD.Get_size() > 1:
        mpi.COMM_WORLD.Abort(code)
    raise SystemExit(code)


def _world_rank_size() -> tuple[int, int]:
    mpi = _mpi_if_initialized()
    if mpi is None:
        return 0, 1
    return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()


def _mpi_if_initialized():
    """mpi4py's MPI module if this process already uses it; never initialises MPI just to abort."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi
