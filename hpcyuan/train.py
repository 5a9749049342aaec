"""The training loop: the one place that wires config, data, model, optimizer and metrics together.

    hpcyuan train --config tiny                   # one process
    hpcyuan launch -n 4 -- train --config demo    # 4 MPI ranks: pp = 2 x dp = 2 (or srun --mpi=pmi2)

Read it top to bottom: `train()` builds everything, resumes from the newest good checkpoint, then
each step runs lr -> forward/backward over micro-batches (the pipeline schedule; one stage when
pp = 1) -> optimizer step (dp reduce, clip, skip non-finite, ZeRO AdamW) -> spike guard (rewind to
the last checkpoint and skip the batch) -> log -> eval -> checkpoint (written in the background
while the next steps run). The data position is
`consumed_samples`: with the data seed it fixes which samples come next, on any number of ranks;
each dp replica takes its slice of every global batch (see hpcyuan/data/sampler.py). World rank 0
prints and writes the run files; the loss comes from the last pipeline stage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpcyuan import ops
from hpcyuan.attempts import Attempts
from hpcyuan.checkpoint.collective import restore
from hpcyuan.checkpoint.saver import Saver
from hpcyuan.config import Config
from hpcyuan.data import GlobalSampler, TokenDataset, check_data, make_batch, micro_batches
from hpcyuan.data.samplelog import SampleLog
from hpcyuan.errors import HpcyuanError
from hpcyuan.metrics import MetricsLogger, Throughput, format_duration, measure_peak_flops, plot_losses
from hpcyuan.model.counting import count_parameters, training_flops_per_token
from hpcyuan.optim import learning_rate
from hpcyuan.parallel.pipeline import Pipeline, build_stage, tied_embedding
from hpcyuan.parallel.timeline import save_timeline
from hpcyuan.parallel.zero import ZeroAdamW
from hpcyuan.runtime.deadline import Deadline
from hpcyuan.runtime.faults import fault
from hpcyuan.runtime.job import Job
from hpcyuan.runtime.signals import EXIT_REQUEUE, stop_request
from hpcyuan.spike_guard import SpikeGuard


@dataclass
class TrainState:
    """Everything that advances during training (what a checkpoint must restore)."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite gradient norm."""
    skipped_batches: list[int] = field(default_factory=list)
    """consumed_samples of the batches the spike guard skips (each is passed over, not trained)."""

    @classmethod
    def from_checkpoint(cls, meta: dict) -> "TrainState":
        return cls(meta["step"], meta["consumed_samples"], meta["skipped_steps"], meta.get("skipped_batches", []))


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_train_loss: float
    val_loss: float
    unigram_entropy: float
    tokens_per_s: float
    wall_s: float
    stopped_by: str | None = None
    """The signal that stopped the run before train.steps (it saved first), or None."""


def train(cfg: Config, config_path: str | None = None) -> TrainResult:
    """Train as `cfg` says; `config_path` only names the file in error messages."""
    start = time.perf_counter()
    job = Job.start(cfg)
    dp = job.groups.dp
    run_dir = Path(cfg.train.run_dir)
    if job.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(cfg.to_toml())

    # Data: verified against the model config before anything expensive happens.
    meta = check_data(cfg, config_path)
    eod_id, unigram_entropy = meta["eod_id"], meta["unigram_entropy_nats"]
    train_set = TokenDataset(cfg.data.dir, "train", cfg.model.seq_length)
    val_set = TokenDataset(cfg.data.dir, "val", cfg.model.seq_length)
    sampler = GlobalSampler(train_set.num_samples, cfg.train.global_batch_size, cfg.data.seed)

    # Model and optimizer: weights are a pure function of (seed, parameter name).
    ops.set_kernels(cfg.train.kernels)
    torch.manual_seed(cfg.train.seed)  # dropout stream
    model = build_stage(cfg.model, job.topology, job.pp_rank, cfg.parallel.recompute_layers)
    model.init_weights(cfg.train.seed)
    pipe = Pipeline(model, job.groups.pp, job.pp_rank, job.topology.pp, cfg)
    tied = tied_embedding(model)
    optimizer = ZeroAdamW(model, cfg.train, cfg.parallel.zero_stage, dp, job.groups.world,
                          bucket_numel=int(cfg.parallel.bucket_mb * 2**20) // 4,
                          tied_params=tied, tied_group=job.embedding if tied else None)

    logger = MetricsLogger(run_dir / "metrics.jsonl", cfg.train.steps, enabled=job.is_main)
    params = count_parameters(cfg.model)
    peak = cfg.train.peak_tflops * 1e12 or measured_peak(job, cfg)
    throughput = Throughput(training_flops_per_token(cfg.model), peak * job.topology.world_size)
    split = f" | layers per stage {list(job.topology.layers_per_stage)}" if job.topology.pp > 1 else ""
    logger.say(
        f"hpcyuan train: {cfg.name} | {params.total / 1e6:.2f}M parameters ({params.active / 1e6:.2f}M active)"
        f" | {job.topology.world_size} rank{'s' * (job.topology.world_size > 1)} (pp {job.topology.pp} x dp "
        f"{job.topology.dp}, ZeRO-{cfg.parallel.zero_stage}, kernels: {ops.kernels_in_use()}){split}"
        f" | {len(train_set.tokens):,} train tokens | global batch {cfg.train.global_batch_size} x "
        f"{cfg.model.seq_length} tokens in {cfg.num_microbatches} micro-batches | {cfg.train.steps} steps"
        f" | peak {peak / 1e9:.1f} GFLOP/s per rank for MFU"
    )

    # Resume from the newest good checkpoint of this run, written by any layout; else start afresh.
    resumed = restore(job, optimizer, cfg, logger.say)
    state = TrainState.from_checkpoint(resumed) if resumed else TrainState()
    if job.is_main and not resumed:
        for name in ("metrics.jsonl", "samples.jsonl", "attempts.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    attempts = Attempts(run_dir / "attempts.jsonl", enabled=job.is_main)
    attempts.started(job, state.step)
    saver = Saver(job, cfg)
    stop = stop_request()  # installed at start by the CLI; signals since then are kept
    deadline = Deadline.of_job(job, sum(optimizer.state_bytes().values()) * 4 // 3)  # + the weights
    if deadline.end_time is not None:
        logger.say(f"the job ends at {time.strftime('%H:%M:%S', time.localtime(deadline.end_time))} (in "
                   f"{format_duration(deadline.end_time - time.time())}): training stops in time to save")
    guard = SpikeGuard(cfg.train)
    sample_log = SampleLog(job, run_dir / "samples.jsonl") if cfg.train.sample_log else None

    window_losses: list[float] = []
    start_step, saved_step, last_loss = state.step, state.step, float("nan")
    step_seconds, stopped_by = 0.0, None
    while state.step < cfg.train.steps:
        if state.consumed_samples in state.skipped_batches:  # a batch the spike guard rejected
            logger.say(f"spike guard: skipping the batch at consumed_samples {state.consumed_samples:,}")
            if sample_log:
                sample_log.skipped(state.consumed_samples, "spike guard")
            state.consumed_samples += cfg.train.global_batch_size
            continue
        t0 = time.perf_counter()
        lr = learning_rate(state.step, cfg.train)
        indices = sampler.local_batch(state.consumed_samples, dp_rank=job.dp_rank, dp_size=dp.size)
        pipe.timeline = [] if state.step + 1 == cfg.train.timeline_step else None
        loss = forward_backward(pipe, optimizer, train_set, indices, eod_id, cfg)
        result = optimizer.step(lr)
        loss = job_mean(job, loss) * (100.0 if fault("loss-spike", samples=state.consumed_samples) else 1.0)
        if pipe.timeline is not None:
            report_timeline(job, pipe, cfg, run_dir, logger, state.step + 1)
        if (reason := guard.check(loss)) and (back := rewind(job, optimizer, saver, cfg, state, reason, logger.say)):
            state, window_losses = back, []
            guard.reset()
            continue
        if sample_log:
            sample_log.trained(state.step + 1, state.consumed_samples, indices)

        state.step += 1
        state.consumed_samples += cfg.train.global_batch_size
        state.skipped_steps += result.skipped
        elapsed = time.perf_counter() - t0
        step_seconds += elapsed
        throughput.add(cfg.train.global_batch_size * cfg.model.seq_length, elapsed)
        window_losses.append(loss)

        if state.step % cfg.train.log_interval == 0 or state.step == cfg.train.steps:
            tokens_per_s, mfu = throughput.report()
            eta = step_seconds / max(1, state.step - start_step) * (cfg.train.steps - state.step)
            logger.train_row(
                {"step": state.step, "loss": float(np.mean(window_losses)), "lr": lr,
                 "grad_norm": result.grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu,
                 "consumed_samples": state.consumed_samples, "skipped_steps": state.skipped_steps,
                 "elapsed_s": time.perf_counter() - start},
                eta,
            )
            last_loss, window_losses = float(np.mean(window_losses)), []
        if cfg.train.eval_interval and state.step % cfg.train.eval_interval == 0 and state.step < cfg.train.steps:
            logger.eval_row(state.step, evaluate(pipe, val_set, eod_id, cfg, job))
        if cfg.checkpoint.interval and state.step % cfg.checkpoint.interval == 0 and state.step < cfg.train.steps:
            saver.save(optimizer, asdict(state))
            saved_step = state.step
        deadline.observe(step_s=elapsed, save_s=saver.last.total)
        if stopped_by := stop.agreed(job.groups.world, deadline.too_close()):
            logger.say(f"stopping at step {state.step} for {stopped_by}, after a checkpoint")
            break

    if state.step > saved_step:  # the end of a run is always a checkpoint (resume goes on from it)
        saver.save(optimizer, asdict(state))
    if stopped_by:  # the scheduler's grace time is short: no final validation
        saver.close()
        attempts.ended(state.step, f"stopped by {stopped_by}")
        logger.say(f"stopped by {stopped_by} at step {state.step}: checkpoint {state.step} saved; exit "
                   f"{EXIT_REQUEUE} (requeue me), the same command resumes the run on any layout")
        return TrainResult(state.step, last_loss, float("nan"), unigram_entropy, 0.0,
                           time.perf_counter() - start, stopped_by)
    val_loss = evaluate(pipe, val_set, eod_id, cfg, job)  # while the last checkpoint is written
    logger.eval_row(state.step, val_loss)
    saver.close()
    attempts.ended(state.step, "done")
    wall = time.perf_counter() - start
    summary = TrainResult(
        steps=state.step, final_train_loss=last_loss, val_loss=val_loss,
        unigram_entropy=unigram_entropy,
        tokens_per_s=(state.step - start_step) * cfg.train.global_batch_size * cfg.model.seq_length
        / max(step_seconds, 1e-9), wall_s=wall,
    )
    row = {**summary.__dict__, "skipped_steps": state.skipped_steps}
    logger.write({"kind": "summary", **row})
    if job.is_main:
        (run_dir / "summary.json").write_text(json.dumps(row, indent=2) + "\n")
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", unigram_entropy)
    logger.say(
        f"done: {state.step - start_step} steps in {format_duration(wall)}"
        + (f" (resumed at step {start_step})" if start_step else "")
        + f" | validation loss {val_loss:.4f} nats/token"
        f" (perplexity {math.exp(val_loss):,.1f}) vs unigram entropy {unigram_entropy:.4f}"
        f" (perplexity {math.exp(unigram_entropy):,.1f}) | {summary.tokens_per_s:,.0f} tok/s"
    )
    return summary


def rewind(job: Job, optimizer, saver: Saver, cfg: Config, state: TrainState, reason: str,
           say) -> TrainState | None:
    """The spike guard fired on the batch at `state.consumed_samples`: reload the last good
    checkpoint and return its state, with that batch marked to be skipped. Without a checkpoint a
    spike is only logged and None returned (the run goes on), while non-finite losses end the run:
    there is no good state to go back to."""
    bad = state.consumed_samples
    say(f"spike guard: {reason} at step {state.step + 1} (the batch at consumed_samples {bad:,})")
    saver.wait()  # the newest checkpoint may still be being written
    meta = restore(job, optimizer, cfg, say)
    if meta is None:
        if "non-finite" in reason:
            raise HpcyuanError(f"spike guard: {reason} and no checkpoint to rewind to; lower train.lr or "
                               f"set checkpoint.interval so that a rewind has somewhere to go")
        say("spike guard: no checkpoint to rewind to yet; going on")
        return None
    back = TrainState.from_checkpoint(meta)
    back.skipped_batches = sorted(set(back.skipped_batches) | set(state.skipped_batches) | {bad})
    say(f"spike guard: rewound to step {back.step}; the batch at consumed_samples {bad:,} will be skipped")
    return back


def forward_backward(pipe: Pipeline, optimizer, dataset, indices, eod_id: int, cfg: Config) -> float | None:
    """Accumulate gradients over this rank's micro-batches; returns the mean loss on the last stage.

    Every micro-batch has the same number of tokens, so scaling each loss by 1/num_microbatches
    makes the accumulated gradient the gradient of the mean loss over the whole batch (the optimizer
    averages over dp replicas, whose batches are equal too).
    """
    optimizer.zero_grad()
    return pipe.train_step(list(micro_batches(dataset, indices, cfg.train.micro_batch_size, eod_id)), optimizer)


def evaluate(pipe: Pipeline, dataset, eod_id: int, cfg: Config, job: Job) -> float:
    """Mean validation loss over a fixed, evenly spread subset of the validation split; the dp
    replicas share the samples (replica r takes every dp-th one)."""
    count = min(cfg.train.eval_samples, dataset.num_samples)
    indices = np.unique(np.linspace(0, dataset.num_samples - 1, count).astype(np.int64))
    mine = indices[job.dp_rank::job.topology.dp]
    mbs = cfg.train.micro_batch_size
    total = pipe.evaluate([make_batch(dataset, mine[s:s + mbs], eod_id) for s in range(0, len(mine), mbs)])
    return job_mean(job, total) * job.topology.dp / len(indices)


def measured_peak(job: Job, cfg: Config) -> float:
    """One rank's matmul FLOP/s, measured on the main rank while the others wait asleep (a peak
    measured beside busy ranks would be theirs to share). With more ranks x threads than cores on a
    node, MFU against world_size x this peak is understated."""
    job.groups.world.barrier()
    peak = torch.zeros(1, dtype=torch.float64)
    if job.is_main:
        peak += measure_peak_flops(torch.bfloat16 if cfg.train.bf16 else torch.float32)
    return float(job.groups.world.broadcast(peak))  # the others wait in here, asleep


def report_timeline(job: Job, pipe: Pipeline, cfg: Config, run_dir: Path, logger, step: int) -> None:
    """Write timeline.json/png of this step and print each stage's idle share beside 1F1B's bubble."""
    p, m = job.topology.pp, cfg.num_microbatches
    title = f"{cfg.name}: step {step}, pp {p} x dp {job.topology.dp}, {m} micro-batches per step"
    shares = save_timeline(job.groups.pp, pipe.timeline, run_dir, job.is_main, title)
    pipe.timeline = None
    if shares is not None:
        logger.say(f"timeline of step {step} in {run_dir}/timeline.png: idle share per stage "
                   + ", ".join(f"{100 * x:.0f}%" for x in shares)
                   + f" (1F1B bubble (p-1)/(m+p-1) = {100 * (p - 1) / (m + p - 1):.0f}%)")


def job_mean(job: Job, value: float | None) -> float:
    """The mean over dp replicas of a number the last pipeline stage has, on every rank."""
    total = torch.tensor([value or 0.0], dtype=torch.float64)
    if job.pp_rank == job.topology.pp - 1:
        job.groups.dp.all_reduce(total)
    job.groups.pp.broadcast(total, root=job.topology.pp - 1)
    return float(total) / job.topology.dp
