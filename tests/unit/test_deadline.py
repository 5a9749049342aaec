"""The deadline's margin: learned from the slowest step and the longest save, never configured."""

from hpcyuan.runtime.deadline import ASSUMED_WRITE_BYTES_PER_S, SAFETY, SLACK_S, Deadline


def test_no_known_end_time_never_stops():
    assert not Deadline(None).too_close(now=1e12)


def test_before_a_save_is_measured_the_margin_comes_from_the_bytes_to_write():
    d = Deadline(end_time=1000.0, state_bytes=int(2e9))
    d.observe(step_s=4.0)
    expected = SAFETY * (4.0 + 2e9 / ASSUMED_WRITE_BYTES_PER_S) + SLACK_S
    assert d.margin_s() == expected
    assert not d.too_close(now=1000.0 - expected - 0.1) and d.too_close(now=1000.0 - expected + 0.1)


def test_the_slowest_step_and_longest_save_set_the_margin():
    d = Deadline(end_time=1000.0, state_bytes=int(2e9))
    for step_s, save_s in ((1.0, 0.0), (3.0, 0.0), (2.0, 5.0), (1.0, 0.0)):
        d.observe(step_s=step_s, save_s=save_s)
    assert d.margin_s() == SAFETY * (3.0 + 5.0) + SLACK_S
