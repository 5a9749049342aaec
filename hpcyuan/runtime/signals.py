"""Stop requests: the signals a scheduler sends before it ends a job, turned into a clean stop.

    stop = stop_request()                     # installs the handlers (SIGUSR2, SIGTERM) once
    ...
    if stop.agreed(job.groups.world, deadline.too_close()):   # once per step, on every rank (one all-reduce)
        save, then exit with EXIT_REQUEUE

Slurm sends the signal asked for with `--signal=B:USR2@N` N seconds before the time limit (to the
batch shell, which forwards it to the ranks) and SIGTERM to every task on preemption or at the limit,
then SIGKILL after the grace time. The handler only records the signal: MPI calls and file I/O are
not safe inside a handler, and ranks receive signals at different moments, in different steps. At
the next step boundary every rank joins one all-reduce (MAX) of what it has received, so all ranks
see the same answer at the same step, save together, and end with EXIT_REQUEUE (75, EX_TEMPFAIL:
"try again later"), which the batch script maps to a requeue.
"""

from __future__ import annotations

import signal

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal this process receives; `agreed` shares it across the job."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.received = 0
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum

    def agreed(self, comm, deadline_near: bool = False) -> str | None:
        """Why to stop now, the same on every rank of `comm`: the name of a stop signal any rank has
        received (e.g. "SIGUSR2"), else "the time limit" when any rank found the deadline near
        (runtime/deadline.py), else None."""
        import torch  # here, not at the top: `hpcyuan launch` imports this module and needs no torch

        got = comm.all_reduce(torch.tensor([self.received, int(deadline_near)], dtype=torch.int64), op="max")
        if int(got[0]):
            return signal.Signals(int(got[0])).name
        return "the time limit" if int(got[1]) else None


_installed: StopRequest | None = None


def stop_request() -> StopRequest:
    """This process's StopRequest, its handlers installed on the first call. `hpcyuan train` calls it
    first thing: the default action of SIGUSR2 is to die, and a signal may come while the ranks are
    still importing torch (seen on a loaded node: 27 s after the job started)."""
    global _installed
    if _installed is None:
        _installed = StopRequest()
    return _installed


def ignore_stop_signals() -> None:
    """After the run has ended (saved): ignore further stop signals. Python puts the default action
    (death) back while the interpreter shuts down, so a signal then would kill a rank that has done
    everything right, and the batch script would see a crash (seen under Slurm: exit 140)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
