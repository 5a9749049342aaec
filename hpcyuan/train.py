"""The training loop: the one place that wires config, data, model, optimizer and metrics together.

    hpcyuan train --config configs/demo.toml

Read it top to bottom: `train()` builds everything, then each step runs
lr -> forward/backward over micro-batches -> optimizer step (clip, skip non-finite) -> log -> eval.
The data position is `consumed_samples`: with the data seed it fixes which samples come next, on
any number of ranks (see hpcyuan/data/sampler.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpcyuan import ops
from hpcyuan.config import Config
from hpcyuan.data import GlobalSampler, TokenDataset, check_data, make_batch, micro_batches
from hpcyuan.metrics import MetricsLogger, Throughput, format_duration, measure_peak_flops, plot_losses
from hpcyuan.model import build_model
from hpcyuan.model.counting import count_parameters, training_flops_per_token
from hpcyuan.optim import LocalAdamW, learning_rate


@dataclass
class TrainState:
    """Everything that advances during training (what a checkpoint must restore)."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_train_loss: float
    val_loss: float
    unigram_entropy: float
    tokens_per_s: float
    wall_s: float


def train(cfg: Config, config_path: str | None = None) -> TrainResult:
    """Train as `cfg` says; `config_path` only names the file in error messages."""
    start = time.perf_counter()
    run_dir = Path(cfg.train.run_dir)
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
    model = build_model(cfg.model)
    model.init_weights(cfg.train.seed)
    optimizer = LocalAdamW(model, cfg.train)

    # A run starts from step 0 (resuming arrives with checkpoints), so its metrics start afresh too.
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    logger = MetricsLogger(run_dir / "metrics.jsonl", cfg.train.steps)
    params = count_parameters(cfg.model)
    peak = cfg.train.peak_tflops * 1e12 or measure_peak_flops(torch.bfloat16 if cfg.train.bf16 else torch.float32)
    throughput = Throughput(training_flops_per_token(cfg.model), peak)
    logger.say(
        f"hpcyuan train: {cfg.name} | {params.total / 1e6:.2f}M parameters ({params.active / 1e6:.2f}M active)"
        f" | {len(train_set.tokens):,} train tokens | global batch {cfg.train.global_batch_size} x "
        f"{cfg.model.seq_length} tokens in {cfg.num_microbatches} micro-batches | {cfg.train.steps} steps"
        f" | peak {peak / 1e9:.1f} GFLOP/s for MFU"
    )

    state = TrainState()
    window_losses: list[float] = []
    step_seconds = 0.0
    while state.step < cfg.train.steps:
        t0 = time.perf_counter()
        lr = learning_rate(state.step, cfg.train)
        indices = sampler.local_batch(state.consumed_samples, dp_rank=0, dp_size=cfg.parallel.dp)
        loss = forward_backward(model, optimizer, train_set, indices, eod_id, cfg)
        result = optimizer.step(lr)

        state.step += 1
        state.consumed_samples += cfg.train.global_batch_size
        state.skipped_steps += result.skipped
        elapsed = time.perf_counter() - t0
        step_seconds += elapsed
        throughput.add(cfg.train.global_batch_size * cfg.model.seq_length, elapsed)
        window_losses.append(loss)

        if state.step % cfg.train.log_interval == 0 or state.step == cfg.train.steps:
            tokens_per_s, mfu = throughput.report()
            eta = step_seconds / state.step * (cfg.train.steps - state.step)
            logger.train_row(
                {"step": state.step, "loss": float(np.mean(window_losses)), "lr": lr,
                 "grad_norm": result.grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu,
                 "consumed_samples": state.consumed_samples, "skipped_steps": state.skipped_steps,
                 "elapsed_s": time.perf_counter() - start},
                eta,
            )
            last_loss, window_losses = float(np.mean(window_losses)), []
        if cfg.train.eval_interval and state.step % cfg.train.eval_interval == 0 and state.step < cfg.train.steps:
            logger.eval_row(state.step, evaluate(model, val_set, eod_id, cfg))

    val_loss = evaluate(model, val_set, eod_id, cfg)
    logger.eval_row(state.step, val_loss)
    wall = time.perf_counter() - start
    summary = TrainResult(
        steps=state.step, final_train_loss=last_loss, val_loss=val_loss,
        unigram_entropy=unigram_entropy,
        tokens_per_s=state.step * cfg.train.global_batch_size * cfg.model.seq_length / step_seconds, wall_s=wall,
    )
    row = {**summary.__dict__, "skipped_steps": state.skipped_steps}
    logger.write({"kind": "summary", **row})
    (run_dir / "summary.json").write_text(json.dumps(row, indent=2) + "\n")
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", unigram_entropy)
    logger.say(
        f"done: {state.step} steps in {format_duration(wall)} | validation loss {val_loss:.4f} nats/token"
        f" (perplexity {math.exp(val_loss):,.1f}) vs unigram entropy {unigram_entropy:.4f}"
        f" (perplexity {math.exp(unigram_entropy):,.1f}) | {summary.tokens_per_s:,.0f} tok/s"
    )
    return summary


def forward_backward(model, optimizer, dataset, indices, eod_id: int, cfg: Config) -> float:
    """Accumulate gradients over this rank's micro-batches; returns the mean loss (fp32).

    Every micro-batch has the same number of tokens, so scaling each loss by 1/num_microbatches
    makes the accumulated gradient the gradient of the mean loss over the whole batch.
    """
    optimizer.zero_grad()
    model.train()
    count = len(indices) // cfg.train.micro_batch_size
    total = torch.zeros((), dtype=torch.float32)
    for batch in micro_batches(dataset, indices, cfg.train.micro_batch_size, eod_id):
        with autocast(cfg.train.bf16):
            loss = model(batch.tokens, batch.position_ids, batch.targets)
        (loss / count).backward()
        total += loss.detach().float()
    return float(total) / count


@torch.no_grad()
def evaluate(model, dataset, eod_id: int, cfg: Config) -> float:
    """Mean validation loss over a fixed, evenly spread subset of the validation split."""
    model.eval()
    count = min(cfg.train.eval_samples, dataset.num_samples)
    indices = np.unique(np.linspace(0, dataset.num_samples - 1, count).astype(np.int64))
    losses = []
    for start in range(0, len(indices), cfg.train.micro_batch_size):
        batch = make_batch(dataset, indices[start:start + cfg.train.micro_batch_size], eod_id)
        with autocast(cfg.train.bf16):
            losses.append(float(model(batch.tokens, batch.position_ids, batch.targets)) * len(batch.tokens))
    model.train()
    return sum(losses) / len(indices)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
