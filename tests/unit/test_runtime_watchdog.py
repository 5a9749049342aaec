"""PoliteWait with fake requests (no MPI): completion, the deadline, the adaptive spin."""

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.watchdog import CollectiveTimeout, PoliteWait


class FakeRequest:
    """Completes on the `after`-th Test() call (never, if after is None)."""

    def __init__(self, after=None):
        self.after, self.tests = after, 0

    def Test(self):  # noqa: N802 - mpi4py's name
        self.tests += 1
        return self.after is not None and self.tests >= self.after


WHERE = dict(rank=2, op="all_reduce", group="dp group of stage 1")


def test_completes_and_returns_the_wait():
    req = FakeRequest(after=50)
    waited = PoliteWait().wait(req, timeout_s=5, **WHERE)
    assert req.tests == 50 and 0 <= waited < 5


def test_deadline_raises_a_one_line_error_naming_rank_op_group():
    with pytest.raises(CollectiveTimeout) as err:
        PoliteWait().wait(FakeRequest(), timeout_s=0.05, **WHERE)
    msg = str(err.value)
    assert isinstance(err.value, HpcyuanError) and "\n" not in msg
    assert msg.startswith("rank 2: all_reduce on communicator 'dp group of stage 1' did not finish within 0.05 s")
    assert err.value.waited_s >= 0.05


def test_spin_adapts_to_recent_waits_within_bounds():
    waiter = PoliteWait(min_spin_s=50e-6, max_spin_s=2e-3)
    for _ in range(20):
        waiter._adapt(10.0)  # long waits (a late peer) are clipped: spin at most max_spin_s
    assert waiter.spin_s == pytest.approx(2e-3)
    for _ in range(60):
        waiter._adapt(1e-6)  # instant completions: back down to the floor
    assert waiter.spin_s == pytest.approx(50e-6)
    fixed = PoliteWait(adaptive=False)
    fixed._adapt(1.0)
    assert fixed.spin_s == fixed.min_spin_s
