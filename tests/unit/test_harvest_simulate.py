"""The trace-driven simulation (hpcyuan/scheduler/simulate.py): the harvester's policy over a seeded
synthetic 1000-node trace, scored per objective; fast enough to run on every change."""

import time

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler import load_site
from hpcyuan.scheduler.simulate import SimParams, simulate, simulate_all, synthetic_trace

SITE = load_site("example")  # scavenger (preemptible, 0.2/node-hour) and batch (1.0)


def test_trace_is_seeded_and_bounded():
    a = synthetic_trace(SITE.partitions, nodes=1000, hours=24, seed=3)
    assert a == synthetic_trace(SITE.partitions, nodes=1000, hours=24, seed=3)
    assert a != synthetic_trace(SITE.partitions, nodes=1000, hours=24, seed=4)
    gaps = [g for gs in a.values() for g in gs]
    assert len(gaps) > 50 and all(0 <= s < e <= 24 * 3600 and 1 <= n <= 1000 for s, e, n in gaps)


def test_objectives_trade_cost_for_speed():
    trace = synthetic_trace(SITE.partitions, nodes=1000, hours=48, seed=0)
    cheap, fast = (simulate(SITE.partitions, trace, obj, SimParams()) for obj in ("cheapest", "fastest"))
    assert cheap.cost / cheap.kept_node_h < fast.cost / fast.kept_node_h
    assert fast.kept_node_h >= cheap.kept_node_h * 0.9
    assert cheap.partitions["scavenger"] > cheap.partitions.get("batch", 0)
    assert 0.5 < cheap.goodput <= 1.0 and cheap.preemptions > 0
    budget = simulate(SITE.partitions, trace, "budget", SimParams(budget=5.0))
    assert budget.cost / (48 * 1.01) <= 5.0  # never more than the budget per hour, on average far less


def test_no_warning_loses_more_work():
    trace = synthetic_trace(SITE.partitions, nodes=1000, hours=48, seed=1)
    warned = simulate(SITE.partitions, trace, "cheapest", SimParams(checkpoint_every_steps=50))
    cold = simulate(SITE.partitions, trace, "cheapest", SimParams(checkpoint_every_steps=50, warning_s=0))
    assert cold.goodput < warned.goodput


def test_simulate_all_is_fast_and_prints_every_objective():
    t = time.perf_counter()
    text = simulate_all(SITE.partitions, 1000, 48, 0, 0.0, 1e8)
    assert time.perf_counter() - t < 5
    assert all(obj in text for obj in ("cheapest", "fastest", "budget")) and "goodput" in text


def test_recorded_trace(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text('{"scavenger": [[0, 7200, 64], [9000, 9600, 8]], "batch": [[100, 3000, 16]]}')
    text = simulate_all(SITE.partitions, 0, 0, 0, 0.0, 1e8, trace_path=path)
    assert text.startswith(f"trace {path}, 3 idle gaps in 2 partitions")
    path.write_text('{"gpu": [[0, 10, 1]]}')
    with pytest.raises(HpcyuanError, match="not in the site profile"):
        simulate_all(SITE.partitions, 0, 0, 0, 0.0, 1e8, trace_path=path)
    path.write_text("[1, 2")
    with pytest.raises(HpcyuanError, match="not a trace"):
        simulate_all(SITE.partitions, 0, 0, 0, 0.0, 1e8, trace_path=path)
