"""The planner's split against the even split, measured: a tiny Yuan with a large vocabulary, whose
LM head makes the last stage heavy.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/pipeline_split.py          # pp = 2, ~1 minute
    .venv/bin/mpiexec -n 4 .venv/bin/python benchmarks/pipeline_split.py          # pp = 4 (needs 4 cores)

Model: the `tiny` preset with VOCAB pieces and LAYERS layers (h = 64), seq 64, micro-batches of 2,
MICRO micro-batches per step under 1F1B, fp32, one thread per rank, ZeroAdamW. The split comes from
hpcyuan.parallel.partition.plan with the "cpu" machine model; the even split from
topology.uniform_split. Both run in the same job, alternating, STEPS timed steps each after a
warm-up; printed: median step time and planned / uniform. Tokens come from the tiny data (vocabulary
512, a subset of the model's): the head's cost depends on the vocabulary size, not on which ids occur.
Run it with at most one rank per core: with more, ranks share cores and the slowest stage no
longer sets the pace. Results: BENCHMARKS.md.
"""

import os
import statistics
import time

import torch

from hpcyuan.config import load_config
from hpcyuan.data import TokenDataset, check_data, micro_batches
from hpcyuan.optim import learning_rate
from hpcyuan.parallel.partition import CostModel, evaluate, plan
from hpcyuan.parallel.pipeline import Pipeline, build_stage, tied_embedding
from hpcyuan.parallel.zero import ZeroAdamW
from hpcyuan.runtime.job import Job
from hpcyuan.runtime.topology import Topology, uniform_split
from hpcyuan.runtime.watchdog import run_main

VOCAB, LAYERS, MICRO, STEPS = 32768, 8, 8, 6


def step_times(cfg, job, dataset, eod_id, layers) -> list[float]:
    """Step times of one layout (the job's grid with `layers` per stage), after 2 warm-up steps."""
    topology = Topology(job.topology.pp, 1, tuple(layers))
    stage = build_stage(cfg.model, topology, job.pp_rank)
    stage.init_weights(cfg.train.seed)
    tied = tied_embedding(stage)
    optimizer = ZeroAdamW(stage, cfg.train, 1, job.groups.dp, job.groups.world, tied_params=tied,
                          tied_group=job.embedding if tied else None)
    pipe = Pipeline(stage, job.groups.pp, job.pp_rank, topology.pp, cfg)
    batches = list(micro_batches(dataset, torch.arange(2 * MICRO).numpy(), 2, eod_id))
    times = []
    for step in range(STEPS + 2):
        job.groups.world.barrier()
        t0 = time.perf_counter()
        optimizer.zero_grad()
        pipe.train_step(batches, optimizer)
        optimizer.step(learning_rate(step, cfg.train))
        times.append(time.perf_counter() - t0)
    return times[2:]


def main() -> None:
    torch.set_num_threads(1)
    data_cfg = load_config("tiny")
    eod_id = check_data(data_cfg)["eod_id"]
    dataset = TokenDataset(data_cfg.data.dir, "train", data_cfg.model.seq_length)
    pp = int(os.environ.get("PMI_SIZE", "1"))
    cfg = load_config("tiny", [f"model.vocab_size={VOCAB}", f"model.num_layers={LAYERS}", f"parallel.pp={pp}",
                               "train.micro_batch_size=2", f"train.global_batch_size={2 * MICRO}",
                               "parallel.timeout_s=300"])
    job = Job.start(cfg)
    model = CostModel.from_config(cfg, machine="cpu")
    planned = plan(cfg, model=model)
    uniform = uniform_split(LAYERS, pp)
    if job.is_main:
        estimate = evaluate(cfg, uniform, "uniform", model=model)
        print(f"tiny, vocab {VOCAB:,}, {LAYERS} layers on pp = {pp}, {MICRO} micro-batches of 2 x 64 tokens: "
              f"planned {list(planned.layers_per_stage)}, uniform {list(uniform)}; the cost model predicts "
              f"uniform / planned slowest stage = {estimate.slowest.time_s / planned.slowest.time_s:.2f}", flush=True)
    results = {"planned": [], "uniform": []}
    for _ in range(2):  # alternate, so drift of the machine hits both
        results["planned"] += step_times(cfg, job, dataset, eod_id, planned.layers_per_stage)
        results["uniform"] += step_times(cfg, job, dataset, eod_id, uniform)
    if job.is_main:
        p, u = statistics.median(results["planned"]), statistics.median(results["uniform"])
        print(f"median step: planned {p * 1e3:.1f} ms, uniform {u * 1e3:.1f} ms; uniform / planned = {u / p:.2f} "
              f"({'planned faster' if u > p else 'planned NOT faster'})", flush=True)


if __name__ == "__main__":
    run_main(main)
