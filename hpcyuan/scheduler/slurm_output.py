"""Parsers of Slurm client output: pure functions of text, golden-tested against real output of the
local cluster (tests/unit/golden/slurm/*.txt, tests/unit/test_harvest_parsers.py).

Every query asks for an explicit, `|`-separated format without a header, so a parser never depends
on column widths or on the site's default formats. The format strings live here beside their parsers:

    sinfo  --noheader -o SINFO_FORMAT                    -> parse_sinfo      -> [PartitionState]
    squeue --noheader -o SQUEUE_FORMAT                   -> parse_squeue     -> [QueuedJob]
    sbatch --test-only ... (stderr)                      -> parse_test_only  -> TestOnly
    sacct  --noheader --parsable2 -X -D -o SACCT_FIELDS  -> parse_sacct      -> [SacctRecord]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.hostlist import expand_hostlist

SINFO_FORMAT = "%R|%a|%D|%T|%N"
"""partition (no `*` on the default) | availability (up, down, drain, inact) | node count | node state | nodes"""
SQUEUE_FORMAT = "%i|%P|%j|%T|%D|%N|%r|%S|%e"
"""job id | partition | name | state | nodes | node list | reason | start | end"""
SACCT_FIELDS = ("JobIDRaw", "JobName", "Partition", "State", "ExitCode", "NNodes", "NodeList", "Start", "End",
                "ElapsedRaw")

_TEST_ONLY = re.compile(r"Job (\d+) to start at (\S+) using (\d+) processors on nodes (\S+) in partition (\S+)")
IDLE_STATES = {"idle"}
"""Node states in which a whole node can be allocated now (`idle~`, `idle*` are powered off / not responding)."""


def parse_time(text: str) -> float | None:
    """Slurm's ISO local time (`2026-11-23T17:50:39`) -> epoch seconds; None for Unknown/None/N/A/empty."""
    if not text or text in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        raise HpcyuanError(f"unexpected Slurm time {text!r} (expected YYYY-MM-DDTHH:MM:SS)") from None


def _fields(line: str, count: int, what: str) -> list[str]:
    parts = line.split("|")
    if len(parts) != count:
        raise HpcyuanError(f"unexpected {what} line (expected {count} |-separated fields): {line!r}")
    return parts


@dataclass(frozen=True)
class PartitionState:
    """One partition as sinfo sees it now."""

    name: str
    available: str
    """"up" (takes and starts jobs), "down" (takes none), "drain", "inact"."""
    nodes: tuple[str, ...]
    idle: tuple[str, ...]

    @property
    def up(self) -> bool:
        return self.available == "up"


def parse_sinfo(text: str) -> dict[str, PartitionState]:
    """`sinfo --noheader -o SINFO_FORMAT` (one line per partition and node state) -> {name: state}."""
    acc: dict[str, dict] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, avail, count, state, nodelist = _fields(line.strip(), 5, "sinfo")
        nodes = expand_hostlist(nodelist) if nodelist else []
        if len(nodes) != int(count):
            raise HpcyuanError(f"sinfo line {line!r}: {count} nodes but the list holds {len(nodes)}")
        part = acc.setdefault(name, {"available": avail, "nodes": [], "idle": []})
        part["nodes"] += nodes
        if state in IDLE_STATES:
            part["idle"] += nodes
    return {name: PartitionState(name, p["available"], tuple(p["nodes"]), tuple(p["idle"])) for name, p in acc.items()}


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    partition: str
    name: str
    state: str
    """PENDING, RUNNING, COMPLETING, CONFIGURING, ..."""
    nodes: int
    node_list: tuple[str, ...]
    reason: str
    start: float | None
    end: float | None

    @property
    def active(self) -> bool:
        """Holds or will hold an allocation (anything in the queue but a job on its way out)."""
        return self.state not in ("COMPLETING", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED")


def parse_squeue(text: str) -> list[QueuedJob]:
    """`squeue --noheader -o SQUEUE_FORMAT` -> [QueuedJob]."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, part, name, state, nodes, nodelist, reason, start, end = _fields(line.strip(), 9, "squeue")
        jobs.append(QueuedJob(job_id, part, name, state, int(nodes),
                              tuple(expand_hostlist(nodelist)) if nodelist else (), reason,
                              parse_time(start), parse_time(end)))
    return jobs


@dataclass(frozen=True)
class TestOnly:
    """What `sbatch --test-only` answered for one shape in one partition."""

    __test__ = False  # not a pytest class
    partition: str
    start: float | None
    """When the job would start (epoch s); None when Slurm refused the shape."""
    nodes: tuple[str, ...] = ()
    processors: int = 0
    error: str = ""
    """Slurm's reason for a refusal (one line)."""

    @property
    def accepted(self) -> bool:
        return self.start is not None


def parse_test_only(partition: str, stderr: str, returncode: int) -> TestOnly:
    """`sbatch --test-only` prints its answer on stderr: "sbatch: Job N to start at T using K processors on
    nodes X in partition P" (rc 0), or an error such as "allocation failure: Requested node configuration
    is not available" (rc 1)."""
    match = _TEST_ONLY.search(stderr)
    if returncode == 0 and match:
        return TestOnly(match.group(5), parse_time(match.group(2)), tuple(expand_hostlist(match.group(4))),
                        int(match.group(3)))
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return TestOnly(partition, None, error=lines[-1] if lines else f"sbatch --test-only exit {returncode}")


@dataclass(frozen=True)
class SacctRecord:
    """One allocation of a job (`-D`: one per requeue; `-X`: the allocation, not its steps)."""

    job_id: str
    name: str
    partition: str
    state: str
    """COMPLETED, REQUEUED, PREEMPTED, TIMEOUT, FAILED, CANCELLED, RUNNING, PENDING, ... (no "by 0" suffix)."""
    exit_code: str
    nodes: int
    node_list: tuple[str, ...]
    start: float | None
    end: float | None
    elapsed_s: int


def parse_sacct(text: str) -> list[SacctRecord]:
    """`sacct --noheader --parsable2 -X -D -o SACCT_FIELDS` -> [SacctRecord], in sacct's order."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, name, part, state, exit_code, nodes, nodelist, start, end, elapsed = _fields(
            line.strip(), len(SACCT_FIELDS), "sacct")
        listed = nodelist not in ("", "None assigned")
        out.append(SacctRecord(job_id, name, part, state.split()[0], exit_code, int(nodes or 0),
                               tuple(expand_hostlist(nodelist)) if listed else (), parse_time(start),
                               parse_time(end), int(elapsed or 0)))
    return out
