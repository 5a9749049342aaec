"""Pipeline schedules as data (hpcyuan/parallel/schedule.py), checked without ranks: matching sends and
receives, deadlock-freedom by simulation for p = 1..8 and m = 1..64, activations in flight, the
bubble formula, and that the checkers do fail on broken schedules.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/unit/test_schedule.py -q -s   # -s shows the picture
"""

from functools import cache

import pytest

from hpcyuan.parallel.schedule import (SCHEDULES, Deadlock, Instr, Op, check_matching, gpipe, one_f_one_b, render,
                                       schedule, simulate)

GRID = [(p, m) for p in range(1, 9) for m in range(1, 65)]


@cache
def programs(name, p, m):
    """Every stage's list, built once per test run (tuples: the cached value must not change)."""
    return tuple(tuple(schedule(name, s, p, m)) for s in range(p))


@cache
def simulated(name, p, m):
    return simulate(programs(name, p, m))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_send_has_its_receive_and_no_deadlock(name):
    worst = 0.0
    for p, m in GRID:
        progs = programs(name, p, m)
        check_matching(progs)
        sim = simulated(name, p, m)  # raises Deadlock if any stage hangs
        assert sim.makespan == 3 * (m + p - 1)  # forward 1 + backward 2, m + p - 1 slots each
        worst = max(worst, abs(sim.bubble - (p - 1) / (m + p - 1)))
    print(f"{name}: {len(GRID)} (p, m) pairs matched and deadlock-free; max |bubble - (p-1)/(m+p-1)| = {worst:.1e}")


def test_1f1b_bubble_is_the_formula_on_every_stage():
    for p, m in GRID:
        sim = simulated("1f1b", p, m)
        expected = (p - 1) / (m + p - 1)
        assert all(abs(idle - expected) < 1e-9 for idle in sim.idle_share), (p, m, sim.idle_share)


def test_in_flight_1f1b_at_most_p_minus_s_gpipe_all():
    for p, m in GRID:
        ofob, gp = simulated("1f1b", p, m), simulated("gpipe", p, m)
        assert ofob.max_in_flight == [min(p - s, m) for s in range(p)], (p, m)
        assert gp.max_in_flight == [m] * p, (p, m)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_each_micro_batch_once_forward_then_backward(name):
    for p, m in GRID:
        for s, prog in enumerate(programs(name, p, m)):
            fwd = [i.micro for i in prog if i.op is Op.FORWARD]
            bwd = [i.micro for i in prog if i.op is Op.BACKWARD]
            assert sorted(fwd) == sorted(bwd) == list(range(m))
            pos = {(i.op, i.micro): k for k, i in enumerate(prog)}
            assert all(pos[Op.FORWARD, j] < pos[Op.BACKWARD, j] for j in range(m))
            ops = {i.op for i in prog}
            assert (Op.RECV_ACT in ops) == (Op.SEND_GRAD in ops) == (s > 0)
            assert (Op.SEND_ACT in ops) == (Op.RECV_GRAD in ops) == (s < p - 1)


def test_1f1b_phases_and_single_stage():
    f, b = Op.FORWARD, Op.BACKWARD
    assert one_f_one_b(0, 1, 3) == [Instr(f, 0), Instr(b, 0), Instr(f, 1), Instr(b, 1), Instr(f, 2), Instr(b, 2)]
    assert gpipe(0, 1, 2) == [Instr(f, 0), Instr(f, 1), Instr(b, 0), Instr(b, 1)]
    # stage 1 of 4: warm-up of 2 forwards, steady F/B pairs, cool-down of 2 backwards
    compute = [(i.op.name[0], i.micro) for i in one_f_one_b(1, 4, 5) if i.op in (f, b)]
    assert compute == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1), ("F", 4), ("B", 2),
                       ("B", 3), ("B", 4)]


def test_transfer_time_delays_each_hop():
    sim = simulate(programs("1f1b", 2, 1), transfer_time=0.5)
    assert sim.makespan == 3 * 2 + 2 * 0.5  # one activation hop and one gradient hop


def test_receive_before_its_forward_deadlocks():
    progs = list(programs("1f1b", 4, 8))
    stage1 = list(progs[1])
    k = stage1.index(Instr(Op.RECV_GRAD, 0))
    progs[1] = [stage1[k]] + stage1[:k] + stage1[k + 1:]  # wait for a gradient before sending anything
    check_matching(progs)  # per-channel order is intact: only the simulation can see the cycle
    with pytest.raises(Deadlock, match=r"stage 1 waits at #0 RECV_GRAD\(0\).*stage 2 waits at #0 RECV_ACT\(0\)"):
        simulate(progs)


def test_missing_or_reordered_send_is_caught():
    progs = programs("gpipe", 3, 4)
    dropped = [progs[0], [i for i in progs[1] if i != Instr(Op.SEND_ACT, 3)], progs[2]]
    with pytest.raises(ValueError, match="act channel stage 1 -> 2: 3 sends, 4 receives"):
        check_matching(dropped)
    with pytest.raises(Deadlock, match=r"stage 2 waits at #\d+ RECV_ACT\(3\)"):
        simulate(dropped)  # the receive waits for ever
    swapped = [list(prog) for prog in progs]
    a, b = swapped[0].index(Instr(Op.SEND_ACT, 0)), swapped[0].index(Instr(Op.SEND_ACT, 1))
    swapped[0][a], swapped[0][b] = swapped[0][b], swapped[0][a]
    with pytest.raises(ValueError, match="message #0 is sent for micro-batch 1 but received for 0"):
        check_matching(swapped)
    with pytest.raises(ValueError, match="receives the message of micro-batch 1"):
        simulate(swapped)
    with pytest.raises(ValueError, match="has no peer stage"):
        check_matching([[Instr(Op.FORWARD, 0), Instr(Op.SEND_ACT, 0)]])


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zb'.*'gpipe', '1f1b'"):
        schedule("zb", 0, 2, 4)
    with pytest.raises(ValueError, match="num_stages=0"):
        schedule("1f1b", 0, 0, 4)
    with pytest.raises(ValueError, match="num_micro=0"):
        schedule("gpipe", 0, 2, 0)
    with pytest.raises(ValueError, match="stage 2 is outside a pipeline of 2 stages"):
        schedule("1f1b", 2, 2, 4)


def test_render_p4_m8():
    sim = simulated("1f1b", 4, 8)
    picture = render(sim)
    print("\n" + picture)
    lines = picture.splitlines()
    assert len(lines) == 1 + 4 + 1  # time ruler, one row per stage, summary
    assert lines[4].startswith("stage 3  ......F0B0--F1B1--")  # last stage: 3 idle forward slots, then 1F1B
    assert lines[1].startswith("stage 0  F0F1F2F3............B0--F4")  # warm-up of p - 1 = 3 plus one
    for row in lines[1:5]:
        assert all(f"F{j}" in row and f"B{j}--" in row for j in range(8))
    assert "makespan 33, bubble 27.3%, in flight per stage [4, 3, 2, 1]" in lines[-1]
