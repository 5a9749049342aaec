"""`hpcyuan harvest` on the local Slurm cluster: background high-priority jobs arrive at random
(seeded, bounded) and take nodes back; a maintenance window takes the cheap partition down. The
harvester keeps one training run going across >= 5 slots in `low` (1.0/node-hour, preemptible) and
`normal` (3.0, not preemptible), on whatever node counts are free; is interrupted with Ctrl-C once and
restarted; and the run ends equal (within float tolerance: the layouts differ) to an uninterrupted
run, every sample trained once. The ledger matches sacct; `hpcyuan report` prints goodput.

Real daemons, real srun --mpi=pmi2 ranks (tiny model, 1 rank per fake node). About 4-5 minutes
(measured 4m13s: 100 s of it the uninterrupted reference). The goodput benchmark is the same scenario
with longer slots: HPCYUAN_HARVEST_STEPS=2500 (default 500; BENCHMARKS.md).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "mpi"))
import training_runs  # noqa: E402  (tests/mpi: train, losses, final_state, check_samples)
from test_workflows import wait_for  # noqa: E402

from hpcyuan.report import summarize  # noqa: E402
from hpcyuan.scheduler.ledger import Ledger, attempt_work  # noqa: E402
from hpcyuan.scheduler.slurm_output import SACCT_FIELDS, parse_sacct  # noqa: E402

STEPS = int(os.environ.get("HPCYUAN_HARVEST_STEPS", "500"))
SLOW = STEPS / 500  # waits scale with the run's length
SEED = 7
PREEMPTIONS = 4
"""High-priority jobs that each take back nodes of the running slot; the last one comes while `low` is down."""
JOB = "hv-test"
SITE = """
name = "harvest-test"
partition = "normal"
exclusive = true
mpi = "pmi2"
srun_flags = ["--kill-on-bad-exit=1"]
[env]
OMP_NUM_THREADS = "1"
MPIR_CVAR_CH4_NETMOD = "ofi"
[partitions.low]
price_per_node_hour = 1.0
max_nodes = 4
preemptible = true
time = "00:10:00"
time_min = "00:05:00"
[partitions.normal]
price_per_node_hour = 3.0
max_nodes = 4
preemptible = false
time = "00:10:00"
"""


def harvest(run_dir: Path, site: Path, log: Path) -> subprocess.Popen:
    sets = [*training_runs.COMMON[1::2], "checkpoint.interval=50", "train.timeline_step=0", f"train.steps={STEPS}",
            f"train.run_dir={run_dir}", "slurm.ranks_per_node=1", "slurm.signal_seconds=20"]
    args = [sys.executable, "-m", "hpcyuan", "harvest", "--config", "tiny", "--site", str(site), "--poll", "2",
            "--job-name", JOB]
    for item in sets:
        args += ["--set", item]
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)


def our_jobs(slurm) -> list[dict]:
    out = slurm.run("squeue", "--noheader", "--name", JOB, "-o", "%i|%P|%T|%D|%N")
    return [dict(zip(["id", "partition", "state", "nodes", "nodelist"], line.split("|"))) for line in out.split()]


def high_job(slurm, tmp_path: Path, on_node: str, nodes: int, seconds: float) -> str:
    """A `normal` job on `nodes` whole nodes including `on_node` (a node of the running slot): it
    preempts the slot, and leaves after `seconds`."""
    script = tmp_path / "high.sh"
    script.write_text("#!/bin/bash\nsleep \"$SLEEP\"\n")
    return slurm.sbatch(script, "-p", "normal", "-N", str(nodes), "-w", on_node, "--exclusive", "-t", "5",
                        "-J", "hv-high", "-o", "/dev/null", "--export", f"ALL,SLEEP={seconds:.1f}")


def last_step(run_dir: Path) -> int:
    return max((w.last_step for w in attempt_work(run_dir)), default=0)


@pytest.fixture
def low_partition(slurm):
    """Puts `low` back up whatever happens (the test takes it down for a maintenance window)."""
    yield lambda state: slurm.run("scontrol", "update", "PartitionName=low", f"State={state}")
    slurm.run("scontrol", "update", "PartitionName=low", "State=UP")


def test_harvester_keeps_the_run_going_across_partitions_and_preemptions(slurm, tmp_path, shakespeare_512,
                                                                        low_partition):
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    training_runs.train(reference, STEPS, 1, 4, "--set", "checkpoint.interval=50", "--set", "train.timeline_step=0",
                        timeout=300 * SLOW)
    print(f"uninterrupted reference: {STEPS} steps on 4 local ranks in {time.monotonic() - t0:.0f} s")

    slurm.wait_idle(4)
    run_dir, site, log = tmp_path / "run", tmp_path / "site.toml", tmp_path / "harvest.log"
    site.write_text(SITE)
    rng = random.Random(SEED)
    # seeded plan: preempt when the run passes these steps; each high job takes 1-3 nodes for 3-12 s
    marks = sorted(rng.sample(range(60, STEPS - 120, 20), PREEMPTIONS))
    plan = [(mark, rng.choice([1, 2, 3]), rng.uniform(3, 12)) for mark in marks]
    print(f"plan (step, nodes, seconds): {[(m, k, round(s, 1)) for m, k, s in plan]}")
    proc = harvest(run_dir, site, log)
    show = lambda: f"{log.read_text()[-4000:]}\n{slurm.queue()}"  # noqa: E731
    try:
        for i, (mark, nodes, seconds) in enumerate(plan):
            job = wait_for(lambda: last_step(run_dir) >= mark and [j for j in our_jobs(slurm)
                                                                  if j["state"] == "RUNNING"],
                           240 * SLOW, f"the run at step {mark}", show)[0]
            if i == 1:  # Ctrl-C: the slot keeps running; the same command goes on with it
                proc.send_signal(signal.SIGINT)
                assert proc.wait(30) == 130, show()
                assert our_jobs(slurm) and "keeps running" in log.read_text(), show()
                proc = harvest(run_dir, site, log)
            if i == PREEMPTIONS - 1:  # maintenance: no new jobs start in `low` for a while
                low_partition("DOWN")
            high_job(slurm, tmp_path, _first_node(job["nodelist"]), nodes, seconds)
            wait_for(lambda: not [j for j in our_jobs(slurm) if j["id"] == job["id"]], 90,
                     f"job {job['id']} preempted", show)
        wait_for(lambda: [j for j in our_jobs(slurm) if j["state"] == "RUNNING" and j["partition"] == "normal"], 90,
                 "the next slot in normal while low is down", show)
        low_partition("UP")
        assert proc.wait(300 * SLOW) == 0, show()
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm.cancel(*[j["id"] for j in our_jobs(slurm)])
    text = log.read_text()
    print(text[-3000:])

    # the ledger is sacct: one slot per job, same partition, nodes, start and end
    ledger = Ledger(run_dir / "harvest.sqlite")
    slots, events = ledger.slots(), ledger.events()
    ledger.close()
    recs = parse_sacct(slurm.run("sacct", "--noheader", "--parsable2", "-X", "-D", "-j",
                                 ",".join(s.job_id for s in slots), "-o", ",".join(SACCT_FIELDS)))
    assert [(s.job_id, s.partition, s.nodes, s.start, s.end) for s in slots] == [
        (r.job_id, r.partition, r.nodes, r.start, r.end) for r in recs], (slots, recs)
    assert len(slots) >= 5 and {s.partition for s in slots} == {"low", "normal"}, slots
    assert sum(s.ended == "preempted" for s in slots) == PREEMPTIONS and slots[-1].ended == "completed", slots
    assert any("skipped low: partition is down" in text for _, kind, text in events if kind == "decision"), events
    # never two copies: the slots do not overlap in time
    for a, b in zip(slots, slots[1:]):
        assert a.end <= b.start, (a, b)

    # the same model as the uninterrupted run, every sample once
    ours, ref = training_runs.losses(run_dir), training_runs.losses(reference)
    assert ours.keys() == ref.keys()
    worst_loss = max(abs(ours[s] - ref[s]) for s in ref)
    a, b = training_runs.final_state(run_dir, STEPS), training_runs.final_state(reference, STEPS)
    worst_weight = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(f"vs the uninterrupted run: max |loss diff| {worst_loss:.2e}, max |weight diff| {worst_weight:.2e}")
    assert worst_loss < 1e-3 and worst_weight < 1e-3
    print(training_runs.check_samples(run_dir, STEPS))

    r = subprocess.run([sys.executable, "-m", "hpcyuan", "report", str(run_dir)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)
    summary = summarize(slots, 8 * 64)
    assert f"goodput: {100 * summary.goodput:.1f}%" in r.stdout
    assert summary.lost_per_preemption <= 1, slots
    keep = REPO / "runs" / "harvest-test-report"  # for a look at the pictures (git-ignored runs/)
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(run_dir / "report", keep)
    shutil.copy(log, keep / "harvest.log")


def _first_node(nodelist: str) -> str:
    from hpcyuan.runtime.hostlist import expand_hostlist

    return expand_hostlist(nodelist)[0]
