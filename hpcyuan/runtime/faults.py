"""Deliberate faults, for the tests that prove hpcyuan survives them (never set in production).

    HPCYUAN_FAULT="kill-in-save:step=4:rank=1"   # rank 1 SIGKILLs itself mid-save of step 4
    HPCYUAN_FAULT="loss-spike:samples=48"         # the loss of the batch at consumed_samples 48 x 100

`fault("kill-in-save", step=4, rank=1)` is True when the variable names that fault and every key it
gives matches the call's value. Only a few fixed points in the code ask (grep for `fault(`), so a
fault is the real failure at a real place: a process killed by the kernel, a loss the guard sees.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "HPCYUAN_FAULT"


def fault(name: str, **where: int) -> bool:
    spec = os.environ.get(VARIABLE, "")
    if not spec:
        return False
    wanted, *conditions = spec.split(":")
    if wanted != name:
        return False
    for cond in conditions:
        key, _, value = cond.partition("=")
        if key not in where or str(where[key]) != value:
            return False
    return True


def kill_self() -> None:
    """Die like a node that loses power: no exception, no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)
