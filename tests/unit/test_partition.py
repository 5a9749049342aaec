"""The stage planner (hpcyuan/parallel/partition.py): exact against brute force, memory caps, the
yuan-102b split, the activation formula against what autograd really keeps, and `hpcyuan plan`.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/unit/test_partition.py -q -s
"""

import itertools

import pytest
from helpers import one_line_error

from hpcyuan import cli
from hpcyuan.config import load_config
from hpcyuan.model import count_parameters, training_flops_per_token
from hpcyuan.parallel.partition import GiB, CostModel, evaluate, layer_costs, plan, validate_pinned
from hpcyuan.runtime.topology import uniform_split

YUAN_102B = [2] * 11 + [3] * 20 + [2]
"""What the planner picks for yuan-102b on 32 stages; Yuan used [2] * 10 + [3] * 20 + [2, 2]."""


def compositions(total: int, parts: int):
    """Every split of `total` layers into `parts` stages of >= 1 layer."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def brute_force(model: CostModel, cap: float):
    """The planner's criteria as one sort key over every split: slowest stage, then fastest stage
    (larger is better), then peak memory, then lighter stages first. None if no split fits `cap`."""
    best = None
    for layers in compositions(model.num_layers, model.pp):
        costs = [model.stage(s, n) for s, n in enumerate(layers)]
        peak = max(c.memory for c in costs)
        if peak > cap:
            continue
        key = (max(c.time_s for c in costs), -min(c.time_s for c in costs), peak, layers)
        best = key if best is None or key < best else best
    return best


SMALL = {  # name: (preset, overrides, machine, recompute_layers)
    "tiny-cpu-vocab8k": ("tiny", ["model.num_layers=8", "model.vocab_size=8192", "parallel.pp=4",
                                  "train.global_batch_size=16"], "cpu", 0),
    "tiny-gpu-pp3": ("tiny", ["model.num_layers=9", "parallel.pp=3"], "gpu", 0),
    "2b-shapes-pp4": ("yuan-2b", ["model.num_layers=10", "parallel.pp=4", "parallel.dp=2"], "gpu", 0),
    "2b-shapes-recompute": ("yuan-2b", ["model.num_layers=11", "parallel.pp=4", "parallel.dp=2"], "gpu", 2),
    "m32-shapes-pp5": ("tiny-m32", ["model.num_layers=10", "parallel.pp=5", "train.global_batch_size=16",
                                    "model.vocab_size=4096"], "cpu", 0),
}


@pytest.mark.parametrize("name", SMALL)
def test_plan_is_optimal_against_brute_force(name):
    preset, overrides, machine, recompute = SMALL[name]
    cfg = load_config(preset, overrides)
    model = CostModel.from_config(cfg, machine=machine, recompute_layers=recompute)
    peaks = sorted({max(model.stage(s, n).memory for s, n in enumerate(layers))
                    for layers in compositions(model.num_layers, model.pp)})
    caps = [None, *peaks]  # every cap at which the feasible set changes
    for cap in caps:
        expected = brute_force(model, float("inf") if cap is None else cap)
        got = plan(cfg, cap, model=model)
        assert got.layers_per_stage == expected[-1], (cap, got.layers_per_stage, expected)
        assert max(c.time_s for c in got.stages) == expected[0]
    print(f"{name}: {len(caps)} caps, uncapped split {list(plan(cfg, model=model).layers_per_stage)}")


@pytest.mark.parametrize("num_layers, pp", [(1, 1), (7, 7), (8, 3), (24, 5), (84, 32), (100, 32), (42, 16)])
def test_layers_sum_and_count(num_layers, pp):
    cfg = load_config("yuan-51b", [f"model.num_layers={num_layers}", f"parallel.pp={pp}",
                                   "parallel.layers_per_stage=[]"])
    layers = plan(cfg).layers_per_stage
    assert len(layers) == pp and sum(layers) == num_layers and min(layers) >= 1


def test_memory_cap_respected_and_infeasible_cap_names_the_smallest():
    cfg = load_config("yuan-102b")
    free = plan(cfg, recompute_layers=2)
    cap = free.peak.memory - 0.1 * GiB  # the uncapped split no longer fits
    capped = plan(cfg, cap, recompute_layers=2)
    assert capped.peak.memory <= cap
    assert capped.layers_per_stage != free.layers_per_stage
    assert capped.slowest.time_s >= free.slowest.time_s  # a cap can only cost time

    message = one_line_error(lambda: plan(cfg, 50 * GiB, recompute_layers=84),
                             "no split of 84 layers over 32 stages fits the memory cap of 50.0 GiB per rank",
                             "the smallest cap any split fits is")
    print(message)
    smallest = float(message.split("fits is ")[1].split(" GiB")[0]) * GiB
    plan(cfg, smallest + 0.05 * GiB, recompute_layers=84)  # the named cap (printed rounded) does fit
    one_line_error(lambda: plan(cfg, smallest - 0.1 * GiB, recompute_layers=84), "no split")


def test_huge_vocabulary_gives_the_last_stage_fewer_layers():
    for V in (512, 32768, 262144):
        cfg = load_config("tiny", ["model.num_layers=16", f"model.vocab_size={V}", "parallel.pp=4",
                                   "train.global_batch_size=16"])
        planned = plan(cfg, machine="cpu")
        uniform = evaluate(cfg, uniform_split(16, 4), "uniform", machine="cpu")
        print(f"V={V}: planned {list(planned.layers_per_stage)} slowest {planned.slowest.time_s * 1e3:.1f} ms, "
              f"uniform {list(uniform.layers_per_stage)} {uniform.slowest.time_s * 1e3:.1f} ms")
        if V >= 32768:  # the head outweighs several layers: the last stage sheds layers, and time
            assert planned.layers_per_stage[-1] < uniform.layers_per_stage[-1]
            assert planned.slowest.time_s < uniform.slowest.time_s
    # the same at Yuan 2.0-2B's shapes on the GPU model: a 4x larger vocabulary moves layers off the head stage
    base = plan(load_config("yuan-2b", ["parallel.pp=4"]))
    huge = plan(load_config("yuan-2b", ["parallel.pp=4", "model.vocab_size=540160"]))
    print(f"yuan-2b pp=4: V=135040 {list(base.layers_per_stage)}, V=540160 {list(huge.layers_per_stage)}")
    assert huge.layers_per_stage[-1] < base.layers_per_stage[-1]


def test_yuan_102b_gets_lighter_first_and_last_stages():
    cfg = load_config("yuan-102b")
    for recompute in (0, 2, 84):  # none, Yuan's 2 layers per stage, full
        planned = plan(cfg, recompute_layers=recompute)
        assert list(planned.layers_per_stage) == YUAN_102B
        uniform = evaluate(cfg, uniform_split(84, 32), "uniform", recompute_layers=recompute)
        yuan = evaluate(cfg, cfg.parallel.layers_per_stage, "yuan", recompute_layers=recompute)
        assert planned.slowest.time_s == uniform.slowest.time_s == yuan.slowest.time_s  # 3 layers bound it
        assert planned.peak.memory <= yuan.peak.memory < uniform.peak.memory
        print(f"recompute {recompute}: peak GiB planned {planned.peak.memory / GiB:.1f} (stage {planned.peak.stage}),"
              f" yuan {yuan.peak.memory / GiB:.1f}, uniform {uniform.peak.memory / GiB:.1f} "
              f"(stage {uniform.peak.stage}); stage 0 {planned.stages[0].memory / GiB:.1f} GiB in all three")
    # a cap between the two peaks (full recompute): the planned split fits, the uniform one does not
    planned, uniform = (plan(cfg, 58.5 * GiB, recompute_layers=84),
                        evaluate(cfg, uniform_split(84, 32), "uniform", recompute_layers=84))
    assert list(planned.layers_per_stage) == YUAN_102B and uniform.peak.memory > 58.5 * GiB


def test_yuan_paper_example_under_a_cap():
    """Yuan 2.0 paper §3.4: 24 layers, h = 6144, 8 stages: uniform [3] x 8 needs ~78 GB on stage 0,
    [2, 2, 3, 3, 4, 4, 4, 2] 56 GB. With a 60 GiB cap the planner finds the same kind of split."""
    cfg = load_config("yuan-102b", ["model.num_layers=24", "model.hidden_size=6144", "model.num_heads=48",
                                    "parallel.pp=8", "parallel.layers_per_stage=[]"])
    uniform = evaluate(cfg, [3] * 8, "uniform")
    planned = plan(cfg, 60 * GiB)
    print(f"uniform stage 0 {uniform.stages[0].memory / GiB:.1f} GiB; planned {list(planned.layers_per_stage)} "
          f"stage 0 {planned.stages[0].memory / GiB:.1f} GiB, peak {planned.peak.memory / GiB:.1f} GiB")
    assert list(planned.layers_per_stage) == [2, 2, 3, 3, 3, 4, 4, 3]
    assert planned.slowest.time_s <= uniform.slowest.time_s
    assert planned.stages[0].memory < 0.75 * uniform.stages[0].memory


def test_validate_pinned_errors_name_the_field():
    assert validate_pinned([2, 3, 2], 7, 3) == (2, 3, 2)
    one_line_error(lambda: validate_pinned([2, 2], 7, 3), "parallel.layers_per_stage = [2, 2]",
                   "one layer count per pipeline stage (parallel.pp = 3)")
    one_line_error(lambda: validate_pinned([4, 0, 3], 7, 3), "parallel.layers_per_stage = [4, 0, 3]",
                   "at least one layer")
    one_line_error(lambda: validate_pinned([2, 2, 2], 7, 3), "[2, 2, 2] sums to 6", "model.num_layers is 7")
    one_line_error(lambda: validate_pinned([], 7, 3), "parallel.layers_per_stage")


@pytest.mark.parametrize("preset", ["tiny", "tiny-m32", "yuan-102b", "yuan-m32"])
def test_block_costs_add_up_to_counting(preset):
    model = load_config(preset).model
    emb, layer, head = layer_costs(model)
    L, tied = model.num_layers, model.vocab_size * model.hidden_size
    assert emb.flops + L * layer.flops + head.flops == training_flops_per_token(model)
    assert emb.params + L * layer.params + head.params - tied == count_parameters(model).total


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_saved_activations_match_autograd(bf16):
    """LayerCost.saved per token against the tensors autograd really keeps for one layer and the head
    (CPU, the C++ ops; parameters and autocast's weight copies are not activations)."""
    torch = pytest.importorskip("torch")
    from hpcyuan import ops
    from hpcyuan.model.yuan import YuanStage

    if not {"rms_norm", "lfa_filter"} <= ops.extension_ops():
        pytest.skip("the formula describes the C++ rms_norm / lfa_filter ops (extension not built)")
    cfg = load_config("tiny", ["model.vocab_size=1024"]).model
    B, T = 2, cfg.seq_length
    costs = layer_costs(cfg, bf16=bf16)

    def saved(layers: int, head: bool) -> int:
        stage = YuanStage(cfg, 0, layers, has_embedding=False, has_head=head)
        params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
        shapes = {s for p in stage.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])}
        kept = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and not (t.dtype == torch.bfloat16 and tuple(t.shape) in shapes):
                kept[ptr] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(B, T, cfg.hidden_size, requires_grad=True)
        targets = torch.randint(0, cfg.vocab_size, (B, T)) if head else None
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            stage(x, torch.arange(T).expand(B, T), targets)
        return sum(kept.values())

    one, two, with_head = saved(1, False), saved(2, False), saved(1, True)
    layer, head = (two - one) / (B * T), (with_head - one) / (B * T)
    print(f"per token: layer {layer:.0f} B measured vs {costs.layer.saved:.0f} modelled, "
          f"head {head:.0f} vs {costs.head.saved:.0f}")
    assert layer == pytest.approx(costs.layer.saved, rel=0.02)
    assert head == pytest.approx(costs.head.saved, rel=0.02)


def test_cli_plan_prints_both_splits(capsys):
    assert cli.main(["plan", "--config", "tiny"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "planned:" in out and "uniform:" in out and "slowest stage" in out and "stage-0 memory" in out

    assert cli.main(["plan", "--config", "tiny", "--set", "parallel.pp=2", "--set", "parallel.layers_per_stage=[1,3]",
                     "--memory-gib", "1", "--machine", "cpu", "--recompute-layers", "all"]) == 0
    out = capsys.readouterr().out
    assert "config:    [1, 3]" in out and "full recompute" in out and "memory cap" in out

    assert cli.main(["plan", "--config", "tiny", "--memory-gib", "0.0001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcyuan: error: no split of 4 layers over 1 stages") and "smallest cap" in err
