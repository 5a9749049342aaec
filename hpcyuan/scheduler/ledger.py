"""The harvest ledger: one sqlite row per slot (one Slurm allocation of the training run), what it
cost and what it bought. Standard library only; schema version 1 in docs/harvest.md.

    ledger = Ledger(run_dir / "harvest.sqlite")
    ledger.submitted("123", shape, time.time())             # the harvester's own record of a submission
    ledger.reconcile(parse_sacct(text), attempt_work(run_dir), stop_reasons)   # sacct is the truth
    ledger.slots()                                          # [Slot], oldest first

The harvester is restartable because everything it needs is here: which jobs it submitted (and so
whether one is still queued or running), what each slot ended as, and the event log.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path

from hpcyuan.attempts import read_attempts
from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.slurm_output import SacctRecord

SCHEMA_VERSION = 1
ENDINGS = ("preempted", "timeout", "completed", "failed", "cancelled", "running", "pending")
_FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "PREEMPTED", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "REQUEUED",
          "BOOT_FAIL", "DEADLINE"}


@dataclass
class Slot:
    """One allocation: a job id (and its requeue index) in one partition on some nodes for a while."""

    job_id: str
    restart: int
    partition: str
    nodes: int = 0
    submitted: float | None = None
    start: float | None = None
    end: float | None = None
    ended: str = "pending"
    """preempted | timeout | completed | failed | cancelled | running | pending (ENDINGS)."""
    sacct_state: str = ""
    steps_kept: int = 0
    steps_lost: int = 0
    save_s: float = 0.0
    load_s: float = 0.0
    """Slot start -> the run resumed and its first step done (start-up, checkpoint load, one step)."""
    kept_node_s: float = 0.0
    """Node-seconds spent in steps that survived into the run (the goodput numerator)."""
    price: float = 0.0
    node_hours: float = 0.0
    cost: float = 0.0


_COLUMNS = [f.name for f in fields(Slot)]
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", "str": "TEXT", "int": "INTEGER", "float": "REAL",
              "float | None": "REAL"}


@dataclass(frozen=True)
class AttemptWork:
    """What one `hpcyuan train` attempt (one slot) did, from attempts.jsonl and metrics.jsonl."""

    job_id: str
    from_step: int
    last_step: int
    """The last step it trained (logged)."""
    saved_step: int
    """The step the next attempt resumed from (or the attempt's own end step when it is the last)."""
    first_step_time: float | None
    """Epoch seconds when its first step was done (resume + one step time)."""
    end_time: float | None
    step_times: dict[int, float]
    """step -> seconds it took (last time it was trained in this attempt)."""
    losses: dict[int, float]


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = self.meta("schema_version")
        if version is None:
            cols = ", ".join(f"{c} {_SQL_TYPES[f.type]}" for c, f in zip(_COLUMNS, fields(Slot)))
            self.db.execute(f"CREATE TABLE slots ({cols}, PRIMARY KEY (job_id, restart))")
            self.db.execute("CREATE TABLE events (time REAL, kind TEXT, text TEXT)")
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise HpcyuanError(f"{self.path}: ledger schema version {version}, this hpcyuan reads {SCHEMA_VERSION}")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.db.commit()

    def event(self, kind: str, text: str, when: float | None = None) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?)", (when or time.time(), kind, text))
        self.db.commit()

    def events(self) -> list[tuple[float, str, str]]:
        return self.db.execute("SELECT time, kind, text FROM events ORDER BY rowid").fetchall()

    def submitted(self, job_id: str, partition: str, price: float, when: float) -> None:
        self.put(Slot(job_id, 0, partition, submitted=when, price=price))

    def put(self, slot: Slot) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        self.db.execute(f"INSERT OR REPLACE INTO slots ({', '.join(_COLUMNS)}) VALUES ({marks})",
                        [getattr(slot, c) for c in _COLUMNS])
        self.db.commit()

    def slots(self) -> list[Slot]:
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM slots ORDER BY submitted, job_id, restart")
        return [Slot(**dict(zip(_COLUMNS, row))) for row in rows]

    def job_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT job_id FROM slots ORDER BY submitted")]

    def reconcile(self, records: list[SacctRecord], work: list[AttemptWork], stop_reasons: dict[str, str]) -> None:
        """Make the slots of the ledger's jobs equal sacct's records (-D: one per requeue), with the work
        each did from the run's own files. `stop_reasons`: job id -> the batch script's reason
        ("preempted", "timed-out") when it logged one."""
        known = {(s.job_id, s.restart): s for s in self.slots()}
        submitted = {s.job_id: s for s in known.values() if s.restart == 0}
        by_job: dict[str, list[AttemptWork]] = {}
        for w in work:
            by_job.setdefault(w.job_id, []).append(w)
        restarts: dict[str, int] = {}
        for rec in records:
            if rec.job_id not in submitted:
                continue
            restart = restarts[rec.job_id] = restarts.get(rec.job_id, -1) + 1
            first = submitted[rec.job_id]
            slot = known.get((rec.job_id, restart)) or Slot(rec.job_id, restart, rec.partition, price=first.price)
            slot.partition, slot.nodes, slot.start, slot.sacct_state = rec.partition, rec.nodes, rec.start, rec.state
            slot.submitted = slot.submitted or first.submitted
            slot.end = rec.end if rec.state in _FINAL else None
            slot.ended = how_it_ended(rec.state, rec.exit_code, stop_reasons.get(rec.job_id, ""))
            attempts = by_job.get(rec.job_id, [])
            if restart < len(attempts):
                _add_work(slot, attempts[restart])
            if slot.start is not None:
                until = slot.end if slot.end is not None else time.time()
                slot.node_hours = slot.nodes * max(0.0, until - slot.start) / 3600
                slot.cost = slot.node_hours * slot.price
            self.put(slot)


def _add_work(slot: Slot, w: AttemptWork) -> None:
    kept = [s for s in w.step_times if s <= w.saved_step]
    slot.steps_kept = len(kept)
    slot.steps_lost = max(0, w.last_step - w.saved_step)
    slot.kept_node_s = slot.nodes * sum(w.step_times[s] for s in kept)
    if slot.start is not None and w.first_step_time is not None:
        slot.load_s = max(0.0, w.first_step_time - slot.start)
    if w.end_time is not None and w.first_step_time is not None and w.step_times:
        last_step_time = w.first_step_time + sum(t for s, t in w.step_times.items() if s > w.from_step + 1)
        slot.save_s = max(0.0, w.end_time - last_step_time)


def how_it_ended(sacct_state: str, exit_code: str, stop_reason: str) -> str:
    """preempted / timeout / completed / failed / cancelled / running / pending, from sacct's state and
    exit code and the batch script's logged stop reason (a job that checkpointed and exited 75 after a
    preemption signal is FAILED or COMPLETED in sacct, but it was preempted)."""
    if sacct_state in ("PENDING", "REQUEUE_HOLD", "REQUEUE_FED"):
        return "pending"
    if sacct_state in ("RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING"):
        return "running"
    if sacct_state == "PREEMPTED" or stop_reason.startswith("preempted"):
        return "preempted"
    if sacct_state in ("TIMEOUT", "DEADLINE") or stop_reason.startswith("timed-out"):
        return "timeout"
    if sacct_state == "CANCELLED":
        return "cancelled"
    if sacct_state == "COMPLETED" and exit_code.split(":")[0] == "0":
        return "completed"
    return "failed"


def attempt_work(run_dir: Path) -> list[AttemptWork]:
    """Per attempt of the run: its steps, how long each took, what survived, from the run's files.

    metrics.jsonl rows carry `elapsed_s` since their process started: a drop starts the next
    attempt's rows. An attempt's kept steps end where the next attempt resumed (its from_step)."""
    attempts_path, metrics_path = run_dir / "attempts.jsonl", run_dir / "metrics.jsonl"
    if not attempts_path.exists():
        return []
    attempts = read_attempts(attempts_path)
    segments: list[list[dict]] = []
    last_elapsed = float("inf")
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if row.get("kind") != "train":
            continue
        if row["elapsed_s"] < last_elapsed:
            segments.append([])
        segments[-1].append(row)
        last_elapsed = row["elapsed_s"]
    ends = {i: json.loads(line)["time"] for i, line in _end_lines(attempts_path).items()}
    assigned = _match_segments(segments, attempts)
    out = []
    for i, a in enumerate(attempts):
        rows = assigned.get(i, [])
        times, losses, prev = {}, {}, None
        for r in rows:
            if prev is not None and r["step"] > prev["step"]:
                times[r["step"]] = (r["elapsed_s"] - prev["elapsed_s"]) / (r["step"] - prev["step"])
            losses[r["step"]] = r["loss"]
            prev = r
        if rows and times:  # the first step's time includes start-up: take the next one's
            times[rows[0]["step"]] = next(iter(times.values()))
        last = max((r["step"] for r in rows), default=a.from_step)
        saved = attempts[i + 1].from_step if i + 1 < len(attempts) else (a.to_step if a.to_step is not None else
                                                                          a.from_step)
        first_time = a.started + times[rows[0]["step"]] if rows and times else None
        out.append(AttemptWork(str(a.job_id), a.from_step, last, saved, first_time,
                               ends.get(i), times, losses))
    return out


def _match_segments(segments: list[list[dict]], attempts) -> dict[int, list[dict]]:
    """attempt index -> its metrics rows. Usually every attempt logged steps (zip); an attempt that
    died before its first step has none: a segment then goes to the last attempt that resumed
    before the segment's first step."""
    if len(segments) == len(attempts):
        return dict(enumerate(segments))
    out, j = {}, 0
    for seg in segments:
        while j + 1 < len(attempts) and attempts[j + 1].from_step < seg[0]["step"]:
            j += 1
        out[j] = seg
        j += 1
    return out


def _end_lines(path: Path) -> dict[int, str]:
    """attempt index -> its end line (attempts without an end have none)."""
    out, index = {}, -1
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["event"] == "start":
            index += 1
        elif index >= 0 and index not in out:
            out[index] = line
    return out
