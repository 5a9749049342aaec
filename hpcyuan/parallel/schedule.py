"""The pipeline schedule as data: one list of instructions per stage, checked and simulated without
ranks (no MPI, no torch). hpcyuan/parallel/pipeline.py executes these lists; docs/pipeline.md has the
pictures. Tested by tests/unit/test_schedule.py.

    prog = schedule("1f1b", stage, pp, num_microbatches)    # [Instr(Op.FORWARD, 0), Instr(Op.SEND_ACT, 0), ...]
    progs = [one_f_one_b(s, 4, 8) for s in range(4)]
    check_matching(progs)                                    # every send has its receive, in order
    print(render(simulate(progs)))                           # makespan, bubble, in-flight, a picture

Semantics (what the executor guarantees and what `simulate` models):
  - A stage runs its list strictly in order, one instruction at a time.
  - SEND_ACT / SEND_GRAD never block: the message is buffered (MPI Isend, completed before the step
    ends) and arrives `transfer_time` after it was issued.
  - RECV_ACT / RECV_GRAD block until the matching send has been issued and its message has arrived.
  - Messages are matched per channel (stage s -> s+1 activations, s+1 -> s gradients) in FIFO order:
    the k-th receive on a channel takes the k-th send, and both must name the same micro-batch
    (`check_matching`). The executor derives its MPI tags from this order.
Under these rules the only way to hang is a cycle of receives, which `simulate` detects (`Deadlock`).

Stage 0 reads tokens, so it has no RECV_ACT / SEND_GRAD; the last stage computes the loss, so it has
no SEND_ACT / RECV_GRAD; with one stage a schedule is FORWARD/BACKWARD only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Sequence


class Op(str, Enum):
    RECV_ACT = "recv_act"    # input activation of `micro` from stage s-1
    FORWARD = "forward"
    SEND_ACT = "send_act"    # output activation of `micro` to stage s+1
    RECV_GRAD = "recv_grad"  # gradient of this stage's output from stage s+1
    BACKWARD = "backward"
    SEND_GRAD = "send_grad"  # gradient of this stage's input to stage s-1


@dataclass(frozen=True)
class Instr:
    op: Op
    micro: int

    def __str__(self) -> str:
        return f"{self.op.name}({self.micro})"


class Deadlock(RuntimeError):
    """No stage can progress: every unfinished stage waits on a receive whose send never comes."""


# --- the schedules -------------------------------------------------------------------------------

def _check(stage: int, num_stages: int, num_micro: int) -> None:
    if num_stages < 1:
        raise ValueError(f"a pipeline needs at least 1 stage, got num_stages={num_stages}")
    if num_micro < 1:
        raise ValueError(f"a schedule needs at least 1 micro-batch, got num_micro={num_micro}")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage {stage} is outside a pipeline of {num_stages} stages (0..{num_stages - 1})")


def _forward(stage: int, num_stages: int, micro: int) -> list[Instr]:
    """Receive the input (not on stage 0), compute, pass the output on (not on the last stage)."""
    prog = [Instr(Op.RECV_ACT, micro)] if stage > 0 else []
    prog.append(Instr(Op.FORWARD, micro))
    if stage < num_stages - 1:
        prog.append(Instr(Op.SEND_ACT, micro))
    return prog


def _backward(stage: int, num_stages: int, micro: int) -> list[Instr]:
    """Receive the output's gradient (the last stage has its loss), compute, pass the input's back."""
    prog = [Instr(Op.RECV_GRAD, micro)] if stage < num_stages - 1 else []
    prog.append(Instr(Op.BACKWARD, micro))
    if stage > 0:
        prog.append(Instr(Op.SEND_GRAD, micro))
    return prog


def gpipe(stage: int, num_stages: int, num_micro: int) -> list[Instr]:
    """All forwards, then all backwards: simple, but every stage holds all m micro-batches' activations."""
    _check(stage, num_stages, num_micro)
    prog = []
    for micro in range(num_micro):
        prog += _forward(stage, num_stages, micro)
    for micro in range(num_micro):
        prog += _backward(stage, num_stages, micro)
    return prog


def one_f_one_b(stage: int, num_stages: int, num_micro: int) -> list[Instr]:
    """1F1B (PipeDream-flush, Megatron's default): the same bubble as GPipe, but stage s holds at most
    p - s micro-batches' activations instead of m, because each backward frees one as soon as the
    pipeline is full."""
    _check(stage, num_stages, num_micro)
    warmup = min(num_stages - stage - 1, num_micro)
    prog = []
    # warm-up: forwards only, until the micro-batch of the first forward reaches the last stage
    # and its gradient can come back (the last stage has no warm-up)
    for micro in range(warmup):
        prog += _forward(stage, num_stages, micro)
    # steady state: one forward, then the backward of the oldest micro-batch in flight; the forward's
    # SEND_ACT precedes the RECV_GRAD, which is what lets the stage below produce that gradient
    for micro in range(num_micro - warmup):
        prog += _forward(stage, num_stages, warmup + micro)
        prog += _backward(stage, num_stages, micro)
    # cool-down: the backwards of the micro-batches still in flight, in order
    for micro in range(num_micro - warmup, num_micro):
        prog += _backward(stage, num_stages, micro)
    return prog


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b}


def schedule(name: str, stage: int, num_stages: int, num_micro: int) -> list[Instr]:
    """The instruction list of `stage` under the schedule called `name` (a key of SCHEDULES)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r}: choose one of {', '.join(map(repr, SCHEDULES))}")
    return SCHEDULES[name](stage, num_stages, num_micro)


# --- checks --------------------------------------------------------------------------------------

_SENDS = {Op.SEND_ACT: ("act", +1), Op.SEND_GRAD: ("grad", -1)}
_RECVS = {Op.RECV_ACT: ("act", -1), Op.RECV_GRAD: ("grad", +1)}


def _channel(instr: Instr, stage: int, num_stages: int) -> tuple[str, int, int] | None:
    """(kind, src, dst) of a transfer instruction, None for compute; ValueError if the peer is missing."""
    if instr.op in _SENDS:
        kind, step = _SENDS[instr.op]
        src, dst = stage, stage + step
    elif instr.op in _RECVS:
        kind, step = _RECVS[instr.op]
        src, dst = stage + step, stage
    else:
        return None
    if not (0 <= src < num_stages and 0 <= dst < num_stages):
        raise ValueError(f"stage {stage}: {instr} has no peer stage in a pipeline of {num_stages} stages")
    return kind, src, dst


def check_matching(schedules: Sequence[Sequence[Instr]]) -> None:
    """Every send has exactly one receive on the peer stage, for the same micro-batch, in the same
    order per channel (the executor matches messages by that order). Raises ValueError otherwise."""
    p = len(schedules)
    sends: dict[tuple, list[int]] = {}
    recvs: dict[tuple, list[int]] = {}
    for stage, prog in enumerate(schedules):
        for instr in prog:
            ch = _channel(instr, stage, p)
            if ch is not None:
                (sends if instr.op in _SENDS else recvs).setdefault(ch, []).append(instr.micro)
    for ch in sorted(set(sends) | set(recvs)):
        sent, received = sends.get(ch, []), recvs.get(ch, [])
        if sent != received:
            kind, src, dst = ch
            k = next((i for i, (a, b) in enumerate(zip(sent, received)) if a != b), min(len(sent), len(received)))
            raise ValueError(
                f"{kind} channel stage {src} -> {dst}: {len(sent)} sends, {len(received)} receives; "
                f"message #{k} is sent for micro-batch {sent[k] if k < len(sent) else 'none'} "
                f"but received for {received[k] if k < len(received) else 'none'}")


# --- simulation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One FORWARD or BACKWARD on a stage's timeline."""

    op: Op
    micro: int
    start: float
    end: float


@dataclass(frozen=True)
class Simulation:
    timelines: list[list[Slot]]
    """Per stage, its computations in order."""
    makespan: float
    """Time from the first instruction to the last computation of any stage."""
    idle_share: list[float]
    """Per stage, the share of the makespan it does not compute (its bubble)."""
    max_in_flight: list[int]
    """Per stage, the most micro-batches forwarded but not yet backwarded (activations held)."""

    @property
    def bubble(self) -> float:
        """The pipeline's idle share: the mean over stages."""
        return sum(self.idle_share) / len(self.idle_share)


def simulate(schedules: Sequence[Sequence[Instr]], forward_time: float = 1.0, backward_time: float = 2.0,
             transfer_time: float = 0.0) -> Simulation:
    """Run every stage's list under the module's semantics and time it.

    Without shared resources the times do not depend on the order in which stages are advanced, so
    each stage runs until it blocks on a receive whose send has not been issued yet, round-robin,
    until all are done (or none can move: Deadlock). A receive whose head-of-channel message is for
    another micro-batch is a ValueError (see check_matching).
    """
    p = len(schedules)
    cost = {Op.FORWARD: forward_time, Op.BACKWARD: backward_time}
    clock, pc = [0.0] * p, [0] * p
    channels: dict[tuple, deque] = {}
    timelines: list[list[Slot]] = [[] for _ in range(p)]
    in_flight, max_in_flight = [0] * p, [0] * p
    progress = True
    while progress:
        progress = False
        for s, prog in enumerate(schedules):
            while pc[s] < len(prog):
                instr = prog[pc[s]]
                ch = _channel(instr, s, p)
                if instr.op in cost:
                    end = clock[s] + cost[instr.op]
                    timelines[s].append(Slot(instr.op, instr.micro, clock[s], end))
                    clock[s] = end
                    in_flight[s] += 1 if instr.op is Op.FORWARD else -1
                    max_in_flight[s] = max(max_in_flight[s], in_flight[s])
                elif instr.op in _SENDS:
                    channels.setdefault(ch, deque()).append((instr.micro, clock[s] + transfer_time))
                else:
                    queue = channels.get(ch)
                    if not queue:
                        break  # blocked: the matching send is not issued yet
                    micro, arrival = queue.popleft()
                    if micro != instr.micro:
                        raise ValueError(f"stage {s}: {instr} receives the message of micro-batch {micro} "
                                         f"(channel {ch[1]} -> {ch[2]} is matched in order)")
                    clock[s] = max(clock[s], arrival)
                pc[s] += 1
                progress = True
    stuck = [(s, prog[pc[s]], pc[s], len(prog)) for s, prog in enumerate(schedules) if pc[s] < len(prog)]
    if stuck:
        raise Deadlock("no stage can progress: " + "; ".join(
            f"stage {s} waits at #{i} {instr} ({i} of {n} done)" for s, instr, i, n in stuck))
    makespan = max((tl[-1].end for tl in timelines if tl), default=0.0)
    busy = [sum(slot.end - slot.start for slot in tl) for tl in timelines]
    idle = [1.0 - b / makespan if makespan else 0.0 for b in busy]
    return Simulation(timelines, makespan, idle, max_in_flight)


# --- picture -------------------------------------------------------------------------------------

def render(sim: Simulation, unit: float | None = None) -> str:
    """ASCII timeline: a row per stage, `unit` of time per cell (default: the shortest computation).

    A computation shows as F or B and its micro-batch (F3, B3), padded with '-' over its duration;
    '.' is idle. E.g. with forward 1 and backward 2:  F0F1..B0--F2B1--
    """
    slots = [slot for tl in sim.timelines for slot in tl]
    if not slots:
        return ""
    unit = unit or min(slot.end - slot.start for slot in slots)
    width = 1 + len(str(max(slot.micro for slot in slots)))  # characters per cell
    cells = math.ceil(sim.makespan / unit - 1e-9)
    rows = []
    for s, tl in enumerate(sim.timelines):
        row = ["."] * (cells * width)
        for slot in tl:
            a, b = round(slot.start / unit) * width, round(slot.end / unit) * width
            label = f"{slot.op.name[0]}{slot.micro}"
            row[a:b] = list(label.ljust(b - a, "-")[:b - a])
        rows.append(f"stage {s:<2d} {''.join(row)}  idle {sim.idle_share[s]:.0%}")
    ruler = "".join(f"{t * unit:<{10 * width}g}" for t in range(0, cells, 10))
    head = f"time     {ruler}".rstrip()
    return "\n".join([head, *rows, f"makespan {sim.makespan:g}, bubble {sim.bubble:.1%}, "
                      f"in flight per stage {sim.max_in_flight}"])
