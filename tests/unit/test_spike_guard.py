"""The spike guard's two triggers, and what never triggers it."""

import dataclasses
import math

from hpcyuan.config import TrainConfig
from hpcyuan.spike_guard import SpikeGuard


def guard(**kw):
    return SpikeGuard(dataclasses.replace(TrainConfig(), spike_window=4, **kw))


def test_a_loss_above_factor_times_the_recent_mean_triggers_once_the_window_is_full():
    g = guard(spike_factor=2.0)
    for loss in (50.0, 4.0, 4.0):
        assert g.check(loss) is None  # window not full: the first losses of a run fall fast
    assert g.check(30.0) is None  # the window is full only now: (50, 4, 4, 30)
    assert g.check(40.0) is None  # 40 < 2 x mean(50, 4, 4, 30) = 44
    assert "loss 40.0000 > 2 x the mean 19.5000" in g.check(40.0)  # mean(4, 4, 30, 40)
    assert list(g.recent) == [4.0, 4.0, 30.0, 40.0]  # a spike is not added to the mean


def test_nonfinite_losses_in_a_row_trigger_and_a_finite_one_resets_the_count():
    g = guard(nonfinite_limit=3)
    assert g.check(math.nan) is None and g.check(math.inf) is None
    assert g.check(4.0) is None
    assert g.check(math.nan) is None and g.check(math.nan) is None
    assert g.check(math.nan) == "3 non-finite losses in a row"


def test_factor_zero_and_limit_zero_turn_it_off():
    g = guard(spike_factor=0.0, nonfinite_limit=0)
    for loss in (1.0, 1.0, 1.0, 1.0, 1e9, math.nan, math.nan, math.nan, math.nan):
        assert g.check(loss) is None
