"""Policy at scale: replay a cluster trace of idle gaps and preemptions through the harvester's own
policy (policy.choose) and score each objective, before spending any allocation.

    trace = synthetic_trace(site.partitions, nodes=1000, hours=48, seed=0)
    results = {obj: simulate(site.partitions, trace, obj, SimParams()) for obj in OBJECTIVES}
    print(results_table(results))         # or: hpcyuan harvest --simulate --site SITE

A trace is, per partition, a list of idle gaps: (start, end, nodes). In a preemptible partition a
gap ends when its owners take the nodes back (a preemption: the slot gets `warning_s` to save); in a
partition that is not preemptible it ends at the next reservation, which backfill knows, so the
slot's --time fits it and ends with a saved checkpoint. A slot lives in one gap; the harvester polls
every `poll_s` while nothing runs. Work is counted in node-seconds at the partition's speed.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.policy import OBJECTIVES, Offer, choose
from hpcyuan.scheduler.site import PartitionProfile

Gap = tuple[float, float, int]


@dataclass(frozen=True)
class SimParams:
    load_s: float = 90.0
    """Slot start -> first step (start-up, checkpoint load)."""
    save_s: float = 20.0
    """Final checkpoint of a slot (a signal or the time limit)."""
    step_s: float = 10.0
    """One training step; a preemption without enough warning loses the steps since the last save."""
    checkpoint_every_steps: int = 1
    warning_s: float = 30.0
    """Notice a preempted slot gets (--signal / GraceTime): enough to save when >= save_s."""
    poll_s: float = 60.0
    usable: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    budget: float = 0.0


@dataclass(frozen=True)
class SimResult:
    objective: str
    slots: int
    preemptions: int
    allocated_node_h: float
    kept_node_h: float
    """Node-hours of kept steps, in reference-speed units."""
    cost: float
    partitions: dict[str, int]

    @property
    def goodput(self) -> float:
        return self.kept_node_h / self.allocated_node_h if self.allocated_node_h else 0.0


def synthetic_trace(partitions: dict[str, PartitionProfile], nodes: int = 1000, hours: float = 48.0,
                    seed: int = 0) -> dict[str, list[Gap]]:
    """Seeded idle gaps for each partition of a `nodes`-node cluster: Poisson arrivals (about 3 an
    hour), sizes log-uniform from 1 node to a third of the cluster, lengths exponential (preemptible:
    mean 40 min, cut short at random; reservations: mean 25 min)."""
    rng = random.Random(seed)
    trace = {}
    for name, prof in partitions.items():
        gaps, t, end = [], 0.0, hours * 3600
        while True:
            t += rng.expovariate(3 / 3600)
            if t >= end:
                break
            size = min(nodes, int(round(2 ** rng.uniform(0, math.log2(max(1.0, nodes / 3))))))
            length = rng.expovariate(1 / (2400 if prof.preemptible else 1500)) + 120
            gaps.append((t, min(end, t + length), max(1, size)))
        trace[name] = gaps
    return trace


def simulate(partitions: dict[str, PartitionProfile], trace: dict[str, list[Gap]], objective: str,
             params: SimParams = SimParams()) -> SimResult:
    end = max((g[1] for gaps in trace.values() for g in gaps), default=0.0)
    t, slots, preemptions, alloc, kept, cost = 0.0, 0, 0, 0.0, 0.0, 0.0
    used: dict[str, int] = {}
    while t < end:
        offers, open_gaps = {}, {}
        for name, gaps in trace.items():
            live = [g for g in gaps if g[0] <= t < g[1]]
            if live:
                open_gaps[name] = max(live, key=lambda g: g[2])
                offers[name] = Offer(name, open_gaps[name][2], t)
            else:
                offers[name] = Offer(name, error="no idle nodes")
        decision = choose(partitions, offers, list(params.usable), objective, t, params.budget)
        if decision.shape is None:
            t += params.poll_s
            continue
        shape, prof = decision.shape, partitions[decision.shape.partition]
        gap_end = open_gaps[shape.partition][1]
        limit = t + _seconds(prof.time)
        stop = min(gap_end, limit)
        duration = stop - t
        preempted = prof.preemptible and gap_end < limit
        work = max(0.0, duration - params.load_s - params.save_s)
        if preempted:
            preemptions += 1
            if params.warning_s < params.save_s:  # no time to save: back to the last checkpoint
                work = max(0.0, work - params.step_s * params.checkpoint_every_steps / 2)
            else:  # the step under way when the signal came
                work = max(0.0, work - params.step_s / 2)
        nodes = shape.nodes_max
        slots += 1
        used[shape.partition] = used.get(shape.partition, 0) + 1
        alloc += nodes * duration / 3600
        kept += nodes * work * prof.speed / 3600
        cost += nodes * duration / 3600 * prof.price
        t = stop + params.poll_s / 2  # the harvester notices the end at its next poll
    return SimResult(objective, slots, preemptions, alloc, kept, cost, used)


def _seconds(slurm_time: str) -> float:
    """Slurm time ([D-]HH:MM:SS, MM:SS, or minutes) -> seconds."""
    days, _, rest = slurm_time.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + int(days or 0) * 86400


def results_table(results: list[SimResult], tokens_per_node_hour: float) -> str:
    lines = [f"{'objective':<10} {'slots':>5} {'preempt':>7} {'node-h':>9} {'goodput':>8} {'cost':>10} "
             f"{'cost/1e9 tok':>12}  slots per partition"]
    for r in results:
        tokens = r.kept_node_h * tokens_per_node_hour
        per = r.cost / tokens * 1e9 if tokens else float("nan")
        parts = ", ".join(f"{k} {v}" for k, v in sorted(r.partitions.items()))
        lines.append(f"{r.objective:<10} {r.slots:>5} {r.preemptions:>7} {r.allocated_node_h:>9,.0f} "
                      f"{100 * r.goodput:>7.1f}% {r.cost:>10,.1f} {per:>12,.3g}  {parts}")
    return "\n".join(lines)


def load_trace(path: Path, partitions: dict[str, PartitionProfile]) -> dict[str, list[Gap]]:
    """A recorded trace: JSON {"partition": [[start_s, end_s, nodes], ...], ...} (e.g. from sacct
    history of the site's high-priority jobs turned into idle gaps)."""
    try:
        raw = json.loads(Path(path).read_text())
        trace = {name: [(float(s), float(e), int(n)) for s, e, n in gaps] for name, gaps in raw.items()}
    except (OSError, ValueError, TypeError) as err:
        raise HpcyuanError(f"{path}: not a trace (JSON {{partition: [[start_s, end_s, nodes], ...]}}): {err}") from None
    unknown = set(trace) - set(partitions)
    if unknown:
        raise HpcyuanError(f"{path}: partitions {sorted(unknown)} are not in the site profile")
    return trace


def simulate_all(partitions: dict[str, PartitionProfile], nodes: int, hours: float, seed: int, budget: float,
                 tokens_per_node_hour: float, trace_path: Path | None = None) -> str:
    """Every objective on one trace (recorded, or seeded synthetic); the table `hpcyuan harvest
    --simulate` prints."""
    if trace_path:
        trace, what = load_trace(trace_path, partitions), f"trace {trace_path}"
    else:
        trace, what = synthetic_trace(partitions, nodes, hours, seed), f"trace: {nodes} nodes, {hours:g} h, seed {seed}"
    params = SimParams(budget=budget or 10.0)  # a made-up default, to show the objective
    results = [simulate(partitions, trace, obj, params) for obj in OBJECTIVES]
    gaps = sum(len(g) for g in trace.values())
    head = f"{what}, {gaps} idle gaps in {len(trace)} partitions; budget {params.budget:g}/h"
    return head + "\n" + results_table(results, tokens_per_node_hour)
