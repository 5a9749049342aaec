"""What each pipeline stage did during one step: gathered from the ranks, measured, drawn.

    pipe.timeline = []                             # Pipeline records (op, micro, start, end) per instruction
    pipe.train_step(batches, optimizer)
    stages = gather_timeline(groups.pp, pipe.timeline)    # on pp rank 0: one event list per stage
    idle_shares(stages)                            # per stage: 1 - compute time / step time (the bubble)
    write_chrome_trace(stages, "timeline.json")    # chrome://tracing or https://ui.perfetto.dev
    plot_timeline(stages, "timeline.png")          # stages x time, forward / backward / waiting

Times are `time.perf_counter()` seconds of each rank; ranks of one machine share that clock, ranks
on different nodes do not, so each stage's events are shifted to start at its first instruction
(all stages start the step together, after the previous step's all-gather). Busy time is FORWARD
and BACKWARD; everything else (receives, the optimizer's collectives) is waiting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcyuan.parallel.schedule import Op
from hpcyuan.runtime.comm import Comm

Event = tuple[Op, int, float, float]
"""(operation, micro-batch, start s, end s)."""
_OPS = list(Op)
COMPUTE = (Op.FORWARD, Op.BACKWARD)


def gather_timeline(pp: Comm, events: list[Event]) -> list[list[Event]] | None:
    """Every stage's events on pp rank 0 (None on the others); pickle-free: (n, 4) float64 rows."""
    rows = np.array([[_OPS.index(op), micro, start, end] for op, micro, start, end in events], dtype=np.float64)
    gathered = pp.gather_bytes(rows.tobytes())
    if gathered is None:
        return None
    stages = [np.frombuffer(b, dtype=np.float64).reshape(-1, 4) for b in gathered]
    return [[(_OPS[int(r[0])], int(r[1]), float(r[2]), float(r[3])) for r in s.tolist()] for s in stages]


def save_timeline(pp: Comm, events: list[Event], run_dir: Path, write: bool, title: str) -> list[float] | None:
    """Gather a step's events over the pipeline; where `write` (one rank of the job), write
    timeline.json and timeline.png into `run_dir` and return each stage's idle share."""
    stages = gather_timeline(pp, events)
    if stages is None or not write:
        return None
    write_chrome_trace(stages, run_dir / "timeline.json")
    plot_timeline(stages, run_dir / "timeline.png", title)
    return idle_shares(stages)


def _aligned(stages: list[list[Event]]) -> list[list[Event]]:
    out = []
    for events in stages:
        t0 = min((e[2] for e in events), default=0.0)
        out.append([(op, micro, start - t0, end - t0) for op, micro, start, end in events])
    return out


def idle_shares(stages: list[list[Event]]) -> list[float]:
    """Per stage: the share of the step (first instruction of any stage to last of any) not computing."""
    stages = _aligned(stages)
    span = max(e[3] for events in stages for e in events)
    return [1 - sum(end - start for op, _, start, end in events if op in COMPUTE) / span for events in stages]


def write_chrome_trace(stages: list[list[Event]], path: Path) -> None:
    """Chrome trace-event JSON: one thread per stage, one complete event per instruction."""
    trace = [{"name": f"{op.name} {micro}", "cat": "compute" if op in COMPUTE else "wait", "ph": "X",
              "ts": start * 1e6, "dur": (end - start) * 1e6, "pid": 0, "tid": stage}
             for stage, events in enumerate(_aligned(stages)) for op, micro, start, end in events]
    names = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": s, "args": {"name": f"stage {s}"}}
             for s in range(len(stages))]
    Path(path).write_text(json.dumps({"traceEvents": names + trace, "displayTimeUnit": "ms"}))


def plot_timeline(stages: list[list[Event]], path: Path, title: str = "") -> None:
    """A PNG of stages x time: forward blue, backward green (micro-batch numbers on them), idle blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = _aligned(stages)
    shares = idle_shares(stages)
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(stages) + 1.2))
    for s, events in enumerate(stages):
        for op, micro, start, end in events:
            if op in COMPUTE:
                ax.broken_barh([(start, end - start)], (s - 0.4, 0.8),
                               color="#4c72b0" if op is Op.FORWARD else "#55a868", edgecolor="white", linewidth=0.5)
                ax.text((start + end) / 2, s, str(micro), ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(stages)), [f"stage {s}\nidle {100 * shares[s]:.0f}%" for s in range(len(stages))])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the step started (blue: forward, green: backward, blank: waiting)")
    ax.set_title(title or "pipeline timeline of one step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
