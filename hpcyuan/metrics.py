"""Training metrics: the terminal progress line, JSONL rows, throughput and MFU.

One JSON object per line in `<run_dir>/metrics.jsonl`, with a `kind` of "train", "eval" or
"summary" (fields in docs/metrics.md). The progress line is for people (a terminal or a Slurm log):

    step   40/300 | loss 5.4321 | lr 2.40e-04 | gnorm 0.85 | 6,123 tok/s | MFU 21.5% | ETA 1m12s
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def measure_peak_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> float:
    """Dense matmul FLOP/s this process reaches on its CPU threads: the denominator of MFU on CPUs,
    which publish no peak. The best of many short trials, so a busy neighbour for part of the
    window does not lower it. (On a GPU, set train.peak_tflops to the datasheet figure instead.)"""
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool, caches
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


class MetricsLogger:
    """Appends JSONL rows and prints progress lines; rank 0 of a job is the only one that logs."""

    def __init__(self, path: Path, total_steps: int, enabled: bool = True):
        self.path, self.total_steps, self.enabled = path, total_steps, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def train_row(self, row: dict, eta_s: float) -> None:
        self.write({"kind": "train", **row})
        skipped = f" | skipped {row['skipped_steps']}" if row["skipped_steps"] else ""
        self.say(
            f"step {row['step']:>{len(str(self.total_steps))}}/{self.total_steps}"
            f" | loss {row['loss']:.4f} | lr {row['lr']:.2e} | gnorm {row['grad_norm']:.2f}"
            f" | {row['tokens_per_s']:,.0f} tok/s | MFU {100 * row['mfu']:.1f}%"
            f" | ETA {format_duration(eta_s)}{skipped}"
        )

    def eval_row(self, step: int, val_loss: float) -> None:
        self.write({"kind": "eval", "step": step, "val_loss": val_loss})
        self.say(f"eval step {step}: validation loss {val_loss:.4f}")


class Throughput:
    """Tokens/s and MFU over the steps since the last report (excludes evaluation time)."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def report(self) -> tuple[float, float]:
        """(tokens/s, MFU) since the previous report; resets the window."""
        tokens_per_s = self.tokens / max(self.seconds, 1e-9)
        self.tokens, self.seconds = 0, 0.0
        return tokens_per_s, tokens_per_s * self.flops_per_token / self.peak_flops


def plot_losses(metrics_path: Path, png_path: Path, unigram_entropy: float | None = None) -> None:
    """Training and validation loss against step, from metrics.jsonl, as a PNG beside it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for kind, label, style in (("train", "training loss (mean over the log interval)", "-"),
                               ("eval", "validation loss", "o-")):
        points = [(r["step"], r["loss" if kind == "train" else "val_loss"]) for r in rows if r["kind"] == kind]
        if points:
            ax.plot(*zip(*points), style, label=label)
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="grey", linestyle="--", label="unigram entropy (no context)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{metrics_path.parent.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
