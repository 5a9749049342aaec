"""Where and how big the next slot should be: a pure function of the site profile's partitions, what
the probe saw (sinfo + `sbatch --test-only`), the run's usable node counts and an objective.

    offers = {"low": Offer("low", nodes=4, start=now), "normal": Offer("normal", error="partition down")}
    decision = choose(site.partitions, offers, usable=[1, 2, 4], objective="cheapest", now=now)
    decision.shape      # Shape(partition="low", nodes_min=1, nodes_max=4, time=..., time_min=...) or None
    decision.skipped    # {"normal": "partition down"}: one logged reason per partition not taken

Objectives (docs/harvest.md):
  cheapest  lowest price per token = price_per_node_hour / speed; ties: more nodes x speed
  fastest   most tokens/s = nodes x speed; ties: cheaper
  budget    the fastest shape whose cost per hour (nodes x price) stays within `budget` per hour,
            shrinking the node count to fit; ties: cheaper
The same function runs in `hpcyuan harvest` and in the trace-driven simulation (simulate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.site import PartitionProfile

OBJECTIVES = ("cheapest", "fastest", "budget")
START_NOW_S = 60.0
"""An offer starting within this many seconds counts as "now" (Slurm schedules in passes of seconds)."""


@dataclass(frozen=True)
class Offer:
    """What the probe learnt about one partition: `nodes` whole nodes would start at `start`, or why not."""

    partition: str
    nodes: int = 0
    start: float | None = None
    error: str = ""

    def __post_init__(self):
        if not self.error and (self.nodes < 1 or self.start is None):
            raise HpcyuanError(f"offer of {self.partition}: needs nodes >= 1 and a start time, or an error")


@dataclass(frozen=True)
class Shape:
    """The job to submit: sbatch -p partition -N nodes_min-nodes_max --time time --time-min time_min."""

    partition: str
    nodes_min: int
    nodes_max: int
    time: str
    time_min: str
    price: float
    """Cost of one node-hour in this partition."""
    speed: float
    preemptible: bool

    @property
    def tokens_rate(self) -> float:
        """Relative tokens/s of the largest grant: nodes x speed."""
        return self.nodes_max * self.speed

    @property
    def cost_per_hour(self) -> float:
        return self.nodes_max * self.price

    def describe(self) -> str:
        nodes = f"{self.nodes_min}-{self.nodes_max}" if self.nodes_min < self.nodes_max else str(self.nodes_max)
        kind = "preemptible" if self.preemptible else "not preemptible"
        return (f"{self.partition}: -N {nodes} --time {self.time} --time-min {self.time_min or self.time} "
                f"({kind}, {self.price:g}/node-hour, speed {self.speed:g})")


@dataclass(frozen=True)
class Decision:
    shape: Shape | None
    skipped: dict[str, str] = field(default_factory=dict)
    """partition -> why it was not taken (down, refused, busy, over budget, a worse choice)."""

    def explain(self) -> str:
        chosen = f"chose {self.shape.describe()}" if self.shape else "no partition can start a slot now"
        return "; ".join([chosen, *(f"skipped {p}: {why}" for p, why in self.skipped.items())])


def choose(partitions: dict[str, PartitionProfile], offers: dict[str, Offer], usable: list[int], objective: str,
           now: float, budget: float = 0.0, min_nodes: int = 0) -> Decision:
    """The best shape over `offers` for `objective`; every partition not chosen gets a reason.

    `usable`: node counts the run can use (pp x dp and the batch fit; sbatch.usable), ascending.
    `min_nodes`: 0 asks for exactly the largest count that fits (-N n); N > 0 takes slots of N nodes
    or more and asks for a range (-N N-n: Slurm 22.05 was seen to start such a job on N nodes even
    with more idle). `budget`: cost per hour (objective "budget" only)."""
    if objective not in OBJECTIVES:
        raise HpcyuanError(f"objective {objective!r}: must be one of {', '.join(OBJECTIVES)}")
    if objective == "budget" and budget <= 0:
        raise HpcyuanError("objective budget needs a budget per hour > 0 (--budget)")
    skipped: dict[str, str] = {}
    shapes: list[Shape] = []
    for name, prof in partitions.items():
        offer = offers.get(name)
        if offer is None:
            skipped[name] = "not probed"
        elif offer.error:
            skipped[name] = offer.error
        elif offer.start > now + START_NOW_S:
            skipped[name] = f"would start only in {offer.start - now:.0f} s, not now"
        else:
            cap = min(offer.nodes, prof.max_nodes)
            if objective == "budget" and prof.price > 0:
                cap = min(cap, int(budget // prof.price))
            fits = [n for n in usable if max(1, min_nodes) <= n <= cap]
            if not fits:
                buys = f", budget {budget:g}/h buys {cap}" if objective == "budget" and prof.price > 0 else ""
                skipped[name] = (f"{offer.nodes} nodes free, max_nodes {prof.max_nodes}{buys}: no usable count "
                                 f">= {max(1, min_nodes)} among {usable}")
                continue
            # min_nodes 0: exactly the largest count that fits; else the range from the smallest
            shapes.append(Shape(name, fits[0] if min_nodes else fits[-1], fits[-1], prof.time, prof.time_min,
                                prof.price, prof.speed, prof.preemptible))
    if not shapes:
        return Decision(None, skipped)
    best = min(shapes, key=lambda s: _rank(s, objective))
    for s in shapes:
        if s is not best:
            skipped[s.partition] = f"{objective}: {best.partition} ranks first ({_why(s, best, objective)})"
    return Decision(best, skipped)


def _rank(s: Shape, objective: str) -> tuple:
    per_token = s.price / s.speed
    if objective == "cheapest":
        return (per_token, -s.tokens_rate, s.partition)
    return (-s.tokens_rate, per_token, s.partition)  # fastest, and budget (already capped)


def _why(s: Shape, best: Shape, objective: str) -> str:
    if objective == "cheapest":
        return f"{best.price / best.speed:g} vs {s.price / s.speed:g} per node-hour of reference speed"
    return f"{best.tokens_rate:g} vs {s.tokens_rate:g} node-speed units"
