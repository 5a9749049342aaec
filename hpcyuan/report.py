"""`hpcyuan report RUN_DIR`: what the harvested node-hours bought, from the ledger (harvest.sqlite)
and the run's own files; pictures as PNGs and one static HTML page that embeds them.

    summary = summarize(ledger.slots(), tokens_per_step)      # Summary: goodput, cost, losses, latency
    print(summary.text())
    write_pictures(slots, work, out_dir)                        # timeline.png, loss.png, goodput.png
    write_html(summary, pngs, out_dir / "report.html")

Definitions (docs/harvest.md):
  goodput             node-time of kept steps / allocated node-time (every slot, start to end)
  lost per preemption steps trained in preempted slots but not saved, per preemption
  cost per 1e9 tokens cost of every slot / tokens of the kept steps x 1e9
  requeue latency     end of a slot -> first step of the next one (its start-up and resume included)
"""

from __future__ import annotations

import base64
import html
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from hpcyuan.scheduler.ledger import AttemptWork, Slot

ENDING_COLOURS = {"completed": "#2e7d32", "preempted": "#c62828", "timeout": "#ef6c00", "failed": "#6a1b9a",
                  "cancelled": "#757575", "running": "#1565c0", "pending": "#bdbdbd"}


@dataclass(frozen=True)
class Summary:
    slots: int
    partitions: tuple[str, ...]
    steps_kept: int
    steps_lost: int
    preemptions: int
    allocated_node_h: float
    kept_node_h: float
    cost: float
    tokens: int
    latencies_s: tuple[float, ...]

    @property
    def goodput(self) -> float:
        return self.kept_node_h / self.allocated_node_h if self.allocated_node_h else 0.0

    @property
    def lost_per_preemption(self) -> float:
        return self.steps_lost / self.preemptions if self.preemptions else 0.0

    @property
    def cost_per_billion_tokens(self) -> float:
        return self.cost / self.tokens * 1e9 if self.tokens else 0.0

    def text(self) -> str:
        lat = (f"median {statistics.median(self.latencies_s):.1f} s, max {max(self.latencies_s):.1f} s "
               f"over {len(self.latencies_s)} requeues") if self.latencies_s else "no requeue yet"
        return "\n".join([
            f"slots: {self.slots} in partitions {', '.join(self.partitions) or '-'} | steps kept {self.steps_kept}"
            f" | {self.preemptions} preemptions",
            f"goodput: {100 * self.goodput:.1f}% ({self.kept_node_h * 3600:,.0f} node-s of kept steps / "
            f"{self.allocated_node_h * 3600:,.0f} node-s allocated)",
            f"lost work per preemption: {self.lost_per_preemption:.2f} steps ({self.steps_lost} lost in all)",
            f"cost: {self.cost:.4g} for {self.tokens:,} tokens = {self.cost_per_billion_tokens:,.4g} per "
            "billion tokens",
            f"requeue-to-first-step latency: {lat}",
        ])


def summarize(slots: list[Slot], tokens_per_step: int) -> Summary:
    done = [s for s in slots if s.start is not None]
    latencies = []
    ordered = sorted(done, key=lambda s: s.start)
    for prev, nxt in zip(ordered, ordered[1:]):
        if prev.end is not None and nxt.load_s:
            latencies.append(nxt.start + nxt.load_s - prev.end)
    kept = sum(s.steps_kept for s in done)
    return Summary(
        slots=len(done), partitions=tuple(sorted({s.partition for s in done})), steps_kept=kept,
        steps_lost=sum(s.steps_lost for s in done if s.ended == "preempted"),
        preemptions=sum(s.ended == "preempted" for s in done),
        allocated_node_h=sum(s.node_hours for s in done), kept_node_h=sum(s.kept_node_s for s in done) / 3600,
        cost=sum(s.cost for s in done), tokens=kept * tokens_per_step, latencies_s=tuple(latencies))


def write_pictures(slots: list[Slot], work: list[AttemptWork], out_dir: Path) -> list[Path]:
    """timeline.png (slots by partition, endings coloured, preemptions marked), loss.png (the loss
    across slots, one colour per slot), goodput.png (cumulative goodput over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    done = sorted((s for s in slots if s.start is not None), key=lambda s: s.start)
    t0 = min((s.submitted or s.start for s in done), default=0.0)
    paths = []

    fig, ax = plt.subplots(figsize=(9, 2.8))
    parts = sorted({s.partition for s in done})
    for s in done:
        y = parts.index(s.partition)
        end = s.end if s.end is not None else time.time()  # still running: up to now
        ax.barh(y, end - s.start, left=s.start - t0, height=0.5, color=ENDING_COLOURS.get(s.ended, "#999"),
                edgecolor="black", linewidth=0.5)
        ax.text(s.start - t0 + (end - s.start) / 2, y, f"{s.job_id}\n{s.nodes}n", ha="center", va="center",
                fontsize=7, color="white")
        if s.ended == "preempted":
            ax.plot([end - t0], [y + 0.33], marker="v", color="#c62828", markersize=9)
    ax.set_yticks(range(len(parts)), parts)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the first submission")
    ax.set_title("slots by partition (red triangle: preempted)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for e, c in ENDING_COLOURS.items()
               if any(s.ended == e for s in done)]
    ax.legend(handles, [e for e in ENDING_COLOURS if any(s.ended == e for s in done)], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "timeline.png"))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    for i, w in enumerate(work):
        steps = sorted(w.losses)
        if steps:
            ax.plot(steps, [w.losses[s] for s in steps], ".-", markersize=3, label=f"job {w.job_id}")
            ax.axvline(steps[0] - 0.5, color="#bbb", linewidth=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss across slots (a colour per slot; grey lines: a slot resumes)")
    if work:
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(9, 2.8))
    xs, ys, alloc, kept = [], [], 0.0, 0.0
    for s in done:
        if s.end is None:
            continue
        alloc += s.node_hours
        kept += s.kept_node_s / 3600
        xs.append(s.end - t0)
        ys.append(100 * kept / alloc if alloc else 0.0)
    ax.plot(xs, ys, "o-", color="#1565c0")
    ax.axhline(90, color="#888", linestyle="--", linewidth=0.8)
    ax.text(xs[0] if xs else 0, 91, "goal 90%", fontsize=7, color="#555")
    ax.set_ylim(0, 105)
    ax.set_xlabel("seconds since the first submission")
    ax.set_ylabel("goodput so far (%)")
    ax.set_title("cumulative goodput after each slot")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "goodput.png"))
    plt.close("all")
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def write_html(summary: Summary, slots: list[Slot], pngs: list[Path], path: Path, title: str) -> Path:
    """One static page: the summary, the slot table, the pictures embedded as base64 PNGs."""
    cols = ["job_id", "restart", "partition", "nodes", "ended", "steps_kept", "steps_lost", "load_s", "save_s",
            "node_hours", "cost"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(getattr(s, c)))}</td>" for c in cols) + "</tr>"
                   for s in slots)
    images = "".join(f'<h2>{p.stem}</h2><img alt="{p.stem}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(summary.text())}</pre>"
        f"<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table>{images}</body></html>\n")
    return path


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
