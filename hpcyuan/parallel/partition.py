"""The stage planner: how many decoder layers each pipeline stage holds, from a cost model.

    best = plan(cfg)                                     # Plan: layers_per_stage + per-stage costs
    uniform = evaluate(cfg, uniform_split(L, pp), "uniform")
    print(format_table(best, uniform))                   # = `hpcyuan plan --config yuan-102b`

A stage runs its layers, plus the embedding (stage 0) or the final norm + tied LM head + loss (the
last stage). Per micro-batch of N = micro_batch_size x seq_length tokens, forward + backward:
    time   = FLOPs / flops_per_s + memory-bound bytes / bytes_per_s + operator calls x op_overhead_s
    memory = weights + grads + optimizer (bytes per parameter as in parallel/zero.py)
             + in-flight micro-batches x activations kept for backward + the largest backward workspace
Under 1F1B stage s holds min(pp - s, num_microbatches) micro-batches in flight, so early stages pay
more activation memory. The formulas and the yuan-102b output are in docs/planner.md.

The search is exact: all decoder layers cost the same, so a stage's time and memory depend only on
(stage, layer count) and grow with the count; every bound becomes an interval [lo_s, hi_s] of allowed
counts per stage, a split exists iff sum(lo) <= L <= sum(hi), and each criterion is a binary search
over the values of one table. In order of priority:
  1. minimise the slowest stage (the 1F1B step is ~ (m - 1) x slowest + the sum), under the memory cap;
  2. maximise the fastest stage (no stage emptier than it must be);
  3. minimise the peak memory over stages;
  4. lighter stages first (the lexicographically smallest layers_per_stage).
Pure arithmetic, no torch calls (though importing hpcyuan.model.counting loads the hpcyuan.model
package, which imports torch); tested by tests/unit/test_partition.py, against brute force.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from hpcyuan.config import Config, ModelConfig, ParallelConfig
from hpcyuan.errors import ConfigError, HpcyuanError
from hpcyuan.model.counting import count_parameters
from hpcyuan.runtime.topology import Topology, uniform_split

GiB = 2**30
STREAM_BYTES = 4
"""Bytes per element of the residual stream and the norms: fp32, because the model's parameters are
the fp32 working copy (the embedding output is fp32 and bf16 autocast never narrows the residual)."""


@dataclass(frozen=True)
class Machine:
    """The assumed speed of one rank: a roofline plus a fixed cost per operator call."""

    name: str
    flops_per_s: float
    """Achieved matmul FLOP/s."""
    bytes_per_s: float
    """Achieved bandwidth of memory-bound (elementwise) operators."""
    op_overhead_s: float
    """Eager dispatch / kernel launch cost of one operator call."""

    def describe(self) -> str:
        return (f"{self.name}: {self.flops_per_s / 1e12:g} TFLOP/s matmul, {self.bytes_per_s / 1e9:g} GB/s "
                f"elementwise, {self.op_overhead_s * 1e6:g} us per op")


MACHINES = {
    # H100-class in bf16: ~40% of the dense peak in matmuls, ~75% of HBM3, eager PyTorch dispatch
    "gpu": Machine("gpu", 400e12, 2.5e12, 5e-6),
    # one AVX2 core in fp32, fitted to the tiny model's layer / head / embedding times (docs/planner.md)
    "cpu": Machine("cpu", 80e9, 3e9, 10e-6),
}


@dataclass(frozen=True)
class LayerCost:
    """One block of the model (the embedding, one decoder layer, or final norm + LM head + loss) for
    one micro-batch, forward + backward: per-token terms times the tokens, plus fixed terms."""

    params: int
    flops: float
    """Matmul FLOPs per token."""
    traffic: float
    """Bytes of memory-bound traffic per token."""
    saved: float
    """Activation bytes per token autograd keeps from forward to backward."""
    recomputed: float
    """Activation bytes per token kept when the block is recomputed in backward (its input)."""
    workspace: float
    """Bytes per token alive only while this block's backward runs."""
    ops: int
    """Operator calls per micro-batch."""
    fixed_traffic: float = 0.0
    """Bytes of traffic per micro-batch whatever its size (the embedding's dense V x h gradient)."""
    fixed_workspace: float = 0.0
    """Bytes alive during backward whatever the micro-batch size (a V x h weight gradient)."""
    cast_params: int = 0
    """Parameters of which bf16 autocast keeps a 2-byte copy for backward."""

    def time_s(self, tokens: int, machine: Machine) -> float:
        return (tokens * self.flops / machine.flops_per_s
                + (tokens * self.traffic + self.fixed_traffic) / machine.bytes_per_s
                + self.ops * machine.op_overhead_s)

    def workspace_bytes(self, tokens: int) -> float:
        return max(tokens * self.workspace, self.fixed_workspace)  # they are not alive at the same time


class BlockCosts(NamedTuple):
    embedding: LayerCost
    layer: LayerCost
    head: LayerCost


def layer_costs(model: ModelConfig, bf16: bool = False, flash: bool = True) -> BlockCosts:
    """Costs of the embedding, one decoder layer and the head of `model` (derivation: docs/planner.md).

    a = 2 (bf16 autocast) or 4 bytes for matmul inputs and outputs; r = STREAM_BYTES for the stream.
    FLOPs split counting.training_flops_per_token exactly: 6 per active layer parameter + 12 T P
    attention per layer, 6 V h + 6 h for the head, nothing for the lookup. Saved activations per token
    and layer (what autograd keeps; measured with saved_tensors_hooks in tests/unit/test_partition.py):
        stream 4 h r (norm inputs, LF input and its pre-norm sum) + LF conv pair 4 h + 4 (rstd, fp32)
        matmul inputs: 2 h a (LF output, MLP norm output), or 5 h a under autocast (one cast per linear)
        attention q, k, v, out 4 P a + 4 H (log-sum-exp); not flash: + H T a probabilities
        SwiGLU 4 f a;  MoE: top_k x ((3 h + 4 f) a + 20) + 12 E (router q, k, v) + 12 top_k
    Traffic is 3 x the forward's elementwise reads + writes (backward ~ twice forward).
    """
    h, P, f, V, T = model.hidden_size, model.attention_width, model.ffn_hidden_size, model.vocab_size, model.seq_length
    H, L, E, k = model.num_heads, model.num_layers, model.num_experts, model.moe_top_k
    a, r = (2 if bf16 else 4), STREAM_BYTES
    cast = a != r
    counts = count_parameters(model)
    layer_params = (counts.total - counts.embedding - h) // L  # minus the final norm
    layer_active = (counts.active - counts.embedding - h) // L

    scores = 0 if flash else H * T  # (B, H, T, T) probabilities per token when attention is not fused
    attn_saved = 4 * P * a + 4 * H + scores * a
    mlp_saved = k * ((3 * h + 4 * f) * a + 20) + 12 * E + 12 * k if E else 4 * f * a
    saved = 4 * h * r + 4 * h + 4 + (5 if cast else 2) * h * a + attn_saved + mlp_saved
    forward = (13 * h * r + 4 * h                      # norms, LF filter, residual adds
               + (5 * h * (r + a) if cast else 0)      # autocast copies of the linears' inputs
               + 16 * P * a + 4 * P * a                # RoPE on q and k, attention reads and writes
               + 8 * scores * a                        # scale, mask, softmax, dropout of the probabilities
               + (k * (5 * f + 4 * h) * a if E else 5 * f * a))  # SiLU, product (+ MoE gather, scatter)
    layer = LayerCost(params=layer_params, flops=6 * layer_active + 12 * T * P, traffic=3 * forward,
                      saved=saved, recomputed=h * r, workspace=saved, ops=100 + (18 * E if E else 0),
                      cast_params=layer_params)

    logits = 3 * a * V + (2 * (a + 4) * V if cast else 0)  # logits out and back; fp32 casts
    head = LayerCost(params=V * h + h, flops=6 * V * h + 6 * h,
                     traffic=6 * h * r + logits + 28 * V,    # final norm; log-softmax + NLL in fp32
                     saved=(r + a) * h + 4 * V + 8,         # norm input, linear input, fp32 log-probs, targets
                     recomputed=(r + a) * h + 4 * V + 8,
                     workspace=(8 + (a if cast else 0)) * V,  # fp32 grads of NLL and log-softmax (+ cast)
                     ops=18, fixed_workspace=(4 + (a if cast else 0)) * V * h, cast_params=V * h)
    embedding = LayerCost(params=V * h, flops=0, traffic=5 * h * r, saved=8, recomputed=8, workspace=0, ops=4,
                          fixed_traffic=8 * V * h, fixed_workspace=4 * V * h)
    return BlockCosts(embedding, layer, head)


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per rank of one stage under 1F1B. Per parameter (hpcyuan/parallel/zero.py): the fp32
    working copy 4 B (+ 2 B bf16 autocast copy of matmul weights, assuming one autocast region per
    step: autocast caches a weight's cast until the region ends, so per-micro-batch regions keep one
    copy per in-flight micro-batch instead), fp32 grads 4 B (4/dp with ZeRO-2), AdamW master + m + v
    12 B (12/dp with ZeRO-1/2). Activations: in-flight micro-batches x tokens x saved bytes per token,
    where the first `recompute_layers` layers of a stage keep only their input (Megatron's "block"
    recompute; >= the stage's layers = full recompute). Workspace: the largest of one layer's
    activations (recomputed, or the gradient temporaries of its backward), the head's fp32 loss
    gradients, and a V x h fp32 weight gradient; only one block runs backward at a time."""

    pp: int
    num_microbatches: int
    tokens: int
    """Tokens per micro-batch (micro_batch_size x seq_length)."""
    dp: int
    zero_stage: int
    bf16: bool
    recompute_layers: int = 0

    def in_flight(self, stage: int) -> int:
        """Micro-batches stage `stage` has run forward but not yet backward, at most (1F1B warmup + 1)."""
        return min(self.pp - stage, self.num_microbatches)

    def bytes_per_param(self) -> tuple[float, float]:
        """(weights + grads, optimizer) bytes per parameter, the bf16 copy excluded."""
        grads = 4 / self.dp if self.zero_stage >= 2 else 4
        optimizer = 12 / self.dp if self.zero_stage >= 1 else 12
        return 4 + grads, optimizer

    def stage_memory(self, stage: int, layers: int, blocks: BlockCosts) -> tuple[float, float, float, float]:
        """(weights + grads, optimizer, activations, workspace) in bytes."""
        parts = [blocks.layer] * layers
        if stage == 0:
            parts.append(blocks.embedding)
        if stage == self.pp - 1:
            parts.append(blocks.head)
        params = sum(p.params for p in parts)
        if self.pp == 1:
            params -= blocks.embedding.params  # one tied V x h matrix
        weights_grads, optimizer = (b * params for b in self.bytes_per_param())
        if self.bf16:
            weights_grads += 2 * sum(p.cast_params for p in parts)
        recomputed = min(layers, self.recompute_layers)
        per_token = (recomputed * blocks.layer.recomputed + (layers - recomputed) * blocks.layer.saved
                     + sum(p.saved for p in parts if p is not blocks.layer))
        activations = self.in_flight(stage) * self.tokens * per_token
        workspace = max(p.workspace_bytes(self.tokens) for p in parts)
        return weights_grads, optimizer, activations, workspace


@dataclass(frozen=True)
class StageCost:
    stage: int
    layers: int
    time_s: float
    """Forward + backward of one micro-batch."""
    in_flight: int
    weights_grads: float
    """Bytes of parameters + gradients (and the bf16 copy)."""
    optimizer: float
    activations: float
    workspace: float

    @property
    def memory(self) -> float:
        return self.weights_grads + self.optimizer + self.activations + self.workspace


@dataclass(frozen=True)
class CostModel:
    """Cost of any (stage, layer count) for one config, machine and recompute setting."""

    name: str
    num_layers: int
    blocks: BlockCosts
    memory: MemoryModel
    machine: Machine

    @classmethod
    def from_config(cls, cfg: Config, machine: str | Machine = "gpu", recompute_layers: int | None = None,
                    flash: bool = True) -> "CostModel":
        """`recompute_layers` defaults to the config's parallel.recompute_layers."""
        if isinstance(machine, str):
            if machine not in MACHINES:
                raise HpcyuanError(f"unknown machine '{machine}': known are {', '.join(MACHINES)}")
            machine = MACHINES[machine]
        if recompute_layers is None:
            recompute_layers = cfg.parallel.recompute_layers
        if recompute_layers < 0:
            raise HpcyuanError(f"recompute_layers = {recompute_layers}: must be >= 0")
        tokens = cfg.train.micro_batch_size * cfg.model.seq_length
        memory = MemoryModel(cfg.parallel.pp, cfg.num_microbatches, tokens, cfg.parallel.dp,
                             cfg.parallel.zero_stage, cfg.train.bf16, recompute_layers)
        return cls(cfg.name, cfg.model.num_layers, layer_costs(cfg.model, cfg.train.bf16, flash), memory, machine)

    @property
    def pp(self) -> int:
        return self.memory.pp

    def stage_time(self, stage: int, layers: int) -> float:
        b, tokens = self.blocks, self.memory.tokens
        time = layers * b.layer.time_s(tokens, self.machine)
        if stage == 0:
            time += b.embedding.time_s(tokens, self.machine)
        if stage == self.pp - 1:
            time += b.head.time_s(tokens, self.machine)
        return time

    def stage(self, stage: int, layers: int) -> StageCost:
        memory = self.memory.stage_memory(stage, layers, self.blocks)
        return StageCost(stage, layers, self.stage_time(stage, layers), self.memory.in_flight(stage), *memory)

    def describe(self) -> str:
        m = self.memory
        recompute = ("no recompute" if m.recompute_layers == 0 else "full recompute"
                     if m.recompute_layers >= self.num_layers else f"recompute {m.recompute_layers} layers per stage")
        return (f"{self.name}: {self.num_layers} layers on pp={m.pp} stages, dp={m.dp}, ZeRO-{m.zero_stage}, "
                f"{m.num_microbatches} micro-batches of {m.tokens} tokens, {'bf16' if m.bf16 else 'fp32'}, "
                f"{recompute}")


@dataclass(frozen=True)
class Plan:
    """A split and its per-stage costs."""

    label: str
    layers_per_stage: tuple[int, ...]
    stages: tuple[StageCost, ...]
    model: CostModel

    @property
    def slowest(self) -> StageCost:
        return max(self.stages, key=lambda c: c.time_s)

    @property
    def peak(self) -> StageCost:
        return max(self.stages, key=lambda c: c.memory)

    @property
    def step_time_s(self) -> float:
        """1F1B estimate: one micro-batch through every stage + (m - 1) more at the slowest stage's pace."""
        m = self.model.memory.num_microbatches
        return sum(c.time_s for c in self.stages) + (m - 1) * self.slowest.time_s


def validate_pinned(layers_per_stage: Sequence[int], num_layers: int, pp: int) -> tuple[int, ...]:
    """A user's layers_per_stage, checked by the config (length, >= 1) and the topology (sum)."""
    try:
        parallel = ParallelConfig(pp=pp, layers_per_stage=tuple(layers_per_stage))
    except ConfigError as err:
        raise err.located(section="parallel") from None
    if not parallel.layers_per_stage:
        raise ConfigError("parallel.layers_per_stage", [], f"must list {pp} layer counts")
    return Topology.for_world(parallel, num_layers, pp).layers_per_stage


def evaluate(cfg: Config, layers_per_stage: Sequence[int], label: str = "pinned", *,
             model: CostModel | None = None, **options) -> Plan:
    """The costs of a given split (validated); options as for `CostModel.from_config`."""
    model = model or CostModel.from_config(cfg, **options)
    layers = validate_pinned(layers_per_stage, model.num_layers, model.pp)
    return Plan(label, layers, tuple(model.stage(s, n) for s, n in enumerate(layers)), model)


def plan(cfg: Config, memory_cap_bytes: float | None = None, *, model: CostModel | None = None,
         **options) -> Plan:
    """The best split of cfg.model.num_layers over cfg.parallel.pp stages (criteria in the module
    docstring); raises HpcyuanError naming the smallest cap that would work if none fits."""
    model = model or CostModel.from_config(cfg, **options)
    L, pp = model.num_layers, model.pp
    if pp > L:
        raise HpcyuanError(f"cannot split model.num_layers ({L}) over parallel.pp ({pp}) stages")
    most = L - pp + 1  # the largest count a stage can get
    costs = [[model.stage(s, n) for n in range(1, most + 1)] for s in range(pp)]
    times = [[c.time_s for c in row] for row in costs]
    mems = [[c.memory for c in row] for row in costs]
    cap = float("inf") if memory_cap_bytes is None else memory_cap_bytes

    def upper(bound_t: float, bound_m: float) -> list[int]:  # largest count per stage within both bounds
        return [min(bisect_right(t, bound_t), bisect_right(m, bound_m)) for t, m in zip(times, mems)]

    def fits(hi: list[int], lo: list[int] | None = None) -> bool:
        lo = lo or [1] * pp
        return all(l <= h for l, h in zip(lo, hi)) and sum(lo) <= L <= sum(hi)

    all_mems = sorted({m for row in mems for m in row})
    if not fits(upper(float("inf"), cap)):
        smallest = _first(all_mems, lambda m: fits(upper(float("inf"), m)))
        raise HpcyuanError(
            f"no split of {L} layers over {pp} stages fits the memory cap of {_size(cap)} per rank; "
            f"the smallest cap any split fits is {_size(smallest)} (recompute layers, more dp "
            f"ranks with ZeRO, a smaller micro-batch or more stages lower it)")
    all_times = sorted({t for row in times for t in row})
    slowest = _first(all_times, lambda t: fits(upper(t, cap)))                          # criterion 1
    hi = upper(slowest, cap)

    def lower(bound_t: float) -> list[int]:  # smallest count per stage reaching bound_t (most + 1: none)
        return [bisect_left(t, bound_t) + 1 for t in times]

    lo = lower(_last(all_times, lambda t: fits(hi, lower(t))))                          # criterion 2
    peak = _first(all_mems, lambda m: fits(upper(slowest, min(m, cap)), lo))           # criterion 3
    hi = upper(slowest, min(peak, cap))
    layers, left = [], L                                                                 # criterion 4
    for s in range(pp):
        n = max(lo[s], left - sum(hi[s + 1:]))
        layers.append(n)
        left -= n
    assert left == 0 and all(lo[s] <= n <= hi[s] for s, n in enumerate(layers)), (layers, lo, hi)
    return Plan("planned", tuple(layers), tuple(costs[s][n - 1] for s, n in enumerate(layers)), model)


def _first(values: list[float], ok: Callable[[float], bool]) -> float:
    """The smallest of sorted `values` with ok(v), ok being monotone (False ... True); one must exist."""
    i, j = 0, len(values) - 1
    assert ok(values[j])
    while i < j:
        mid = (i + j) // 2
        i, j = (i, mid) if ok(values[mid]) else (mid + 1, j)
    return values[i]


def _last(values: list[float], ok: Callable[[float], bool]) -> float:
    """The largest of sorted `values` with ok(v), ok being monotone (True ... False); one must exist."""
    i, j = 0, len(values) - 1
    assert ok(values[i])
    while i < j:
        mid = (i + j + 1) // 2
        i, j = (mid, j) if ok(values[mid]) else (i, mid - 1)
    return values[i]


# ---------------------------------------------------------------------------------------------
# the `hpcyuan plan` report


def format_table(planned: Plan, uniform: Plan, pinned: Plan | None = None, cap: float | None = None) -> str:
    """Per stage: layers, ms per micro-batch, memory per rank of each split side by side (the planned
    one broken down), then the slowest stage, step estimate, stage-0 and peak memory compared."""
    plans = [p for p in (planned, uniform, pinned) if p is not None]
    model = planned.model
    unit, scale = ("GiB", GiB) if max(p.peak.memory for p in plans) >= GiB else ("MiB", 2**20)
    lines = [model.describe(),
             f"time: ms per micro-batch (forward + backward) on the assumed {model.machine.describe()}",
             f"memory: {unit} per rank = weights+grads + optimizer + activations (in flight x saved) + workspace",
             ""]
    lines += [f"{'stage':>5} {'in-flight':>9} |" + "|".join(f" {p.label:^20} " for p in plans)
              + "| planned memory breakdown",
              f"{'':>5} {'':>9} |" + "|".join(f" {'layers':>6} {'ms':>6} {unit:>6} " for _ in plans)
              + f"| {'w+g':>6} {'opt':>6} {'act':>6} {'work':>6}"]
    for s in range(model.pp):
        cells = "|".join(f" {p.stages[s].layers:>6} {p.stages[s].time_s * 1e3:>6.1f} {p.stages[s].memory / scale:>6.1f} "
                         for p in plans)
        c = planned.stages[s]
        lines.append(f"{s:>5} {c.in_flight:>9} |{cells}| " + " ".join(
            f"{b / scale:>6.1f}" for b in (c.weights_grads, c.optimizer, c.activations, c.workspace)))
    lines.append("")
    lines += [f"{p.label + ':':<10} {list(p.layers_per_stage)}" for p in plans]
    lines.append("")

    def compare(title: str, value: Callable[[Plan], float], unit: str, scale: float, where=None) -> str:
        parts = [f"{p.label} {value(p) / scale:,.1f} {unit}" + (f" (stage {where(p)})" if where else "")
                 for p in plans]
        return f"{title:<16} " + ", ".join(parts) + f"; uniform / planned = {value(uniform) / value(planned):.2f}"

    lines += [compare("slowest stage", lambda p: p.slowest.time_s, "ms", 1e-3, lambda p: p.slowest.stage),
              compare("1F1B step est.", lambda p: p.step_time_s, *(("s", 1.0) if planned.step_time_s >= 10 else ("ms", 1e-3))),
              compare("stage-0 memory", lambda p: p.stages[0].memory, unit, scale),
              compare("peak memory", lambda p: p.peak.memory, unit, scale, lambda p: p.peak.stage)]
    if cap is not None:
        fit = ", ".join(f"{p.label} {'fits' if p.peak.memory <= cap else 'does NOT fit'}" for p in plans)
        lines.append(f"{'memory cap':<16} {_size(cap)} per rank: {fit}")
    return "\n".join(lines)


def _size(nbytes: float) -> str:
    return f"{nbytes / GiB:.1f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.1f} MiB"


def report(cfg: Config, memory_cap_gib: float | None = None, machine: str = "gpu",
           recompute_layers: int | None = None) -> str:
    """What `hpcyuan plan` prints: the planned split beside the uniform one (and the config's own)."""
    model = CostModel.from_config(cfg, machine=machine, recompute_layers=recompute_layers)
    cap = None if memory_cap_gib is None else memory_cap_gib * GiB
    planned = plan(cfg, cap, model=model)
    uniform = evaluate(cfg, uniform_split(model.num_layers, model.pp), "uniform", model=model)
    pinned = None
    if cfg.parallel.layers_per_stage:
        pinned = evaluate(cfg, cfg.parallel.layers_per_stage, "config", model=model)
    return format_table(planned, uniform, pinned, cap)


__all__ = ["BlockCosts", "CostModel", "LayerCost", "MACHINES", "Machine", "MemoryModel", "Plan", "StageCost",
           "evaluate", "format_table", "layer_costs", "plan", "report", "validate_pinned"]
