"""`hpcyuan submit` end to end on the local Slurm cluster (slurm/local): the batch script of
slurm/train.sbatch checkpoints, requeues itself and resumes through preemption, the time limit, a
resize and a killed rank, and the run ends where an uninterrupted one does.

Real daemons, real srun --mpi=pmi2 ranks spread over the fake nodes (all on this machine); the tiny
model for a few dozen steps. Each test prints the job's output file and its sacct rows on failure.
The scenarios take the executor as an argument: test_submitit.py runs the same ones through
`--executor submitit` (the fixtures `reference` and `cleanup` are in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "mpi"))
import training_runs  # noqa: E402  (tests/mpi: losses, final_state, assert_bit_identical, check_samples)
from training_runs import assert_bit_identical, check_samples, losses  # noqa: E402

STEPS = 40
"""Steps of the runs compared with the uninterrupted reference (4 ranks, pp 1 x dp 4)."""
TRAIN_SETS = [*training_runs.COMMON[1::2], "checkpoint.interval=2", "train.timeline_step=0"]
"""The reference's settings (training_runs.COMMON: fixed decay_steps, log every step, sample log)."""


# ---------------------------------------------------------------------------------------------
# helpers


def submit(run_dir: Path, *sets: str, steps: int = STEPS, executor: str = "sbatch") -> str:
    """`hpcyuan submit --executor EXECUTOR` of the tiny config into run_dir; returns the job id."""
    return submit_jobs(run_dir, *sets, steps=steps, executor=executor)[0]


def submit_jobs(run_dir: Path, *sets: str, steps: int = STEPS, executor: str = "sbatch",
                site: str = "local") -> list[str]:
    """The job ids `hpcyuan submit` printed: one, or the chain of a site that forbids requeue."""
    args = [sys.executable, "-m", "hpcyuan", "submit", "--config", "tiny", "--site", site,
            "--job-name", f"wf-{run_dir.name}", "--executor", executor]
    for item in [*TRAIN_SETS, f"train.steps={steps}", f"train.run_dir={run_dir}", *sets]:
        args += ["--set", item]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"hpcyuan submit failed ({r.returncode}):\n{r.stdout}{r.stderr}"
    return r.stdout.split()


def high_job(slurm, tmp_path: Path, nodes: int, seconds: float) -> str:
    """A `normal` job that needs `nodes` whole nodes for `seconds`: it preempts `low` jobs there."""
    script = tmp_path / "high.sh"
    script.write_text(f"#!/bin/bash\necho \"start $EPOCHREALTIME $SLURM_JOB_NODELIST\" >> {tmp_path}/high.log\n"
                      f"sleep {seconds}\necho \"end $EPOCHREALTIME\" >> {tmp_path}/high.log\n")
    return slurm.sbatch(script, "-p", "normal", "-N", str(nodes), "--exclusive", "-t", "5", "-J", "wf-high",
                        "-D", str(tmp_path), "-o", str(tmp_path / "high.out"))


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


def job_output(run_dir: Path, jobid: str) -> str:
    """The job's log, all slots: slurm-<id>.out (sbatch) or submitit/<id>_0_log.out (submitit)."""
    for path in (run_dir / f"slurm-{jobid}.out", run_dir / "submitit" / f"{jobid}_0_log.out"):
        if path.exists():
            return path.read_text(errors="replace")
    return f"(no log of job {jobid} in {run_dir})"


def diagnostics(slurm, run_dir: Path, *jobids: str):
    def show():
        parts = [slurm.queue()]
        for j in jobids:
            parts.append(f"--- sacct {j}: {slurm.sacct(j)}")
        parts.append(f"--- output:\n{job_output(run_dir, jobids[0])[-6000:]}")
        return "\n".join(parts)
    return show


def wait_for(predicate, timeout: float, what: str, show=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen after {timeout} s\n{show()}")
        time.sleep(0.3)
    return value


def wait_done(slurm, jobid: str, run_dir: Path, timeout: float) -> list[dict]:
    """The job's sacct records once it is COMPLETED for good (not a slot between requeues)."""
    show = diagnostics(slurm, run_dir, jobid)
    deadline = time.monotonic() + timeout
    while True:
        state = slurm.job(jobid).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            recs = slurm.wait_final(jobid, timeout=30)
            assert state == "COMPLETED" and recs[-1]["State"] == "COMPLETED", f"job {jobid} ended {state}\n{show()}"
            return recs
        if time.monotonic() > deadline:
            raise AssertionError(f"job {jobid} not done after {timeout} s (state {state})\n{show()}")
        time.sleep(0.5)


def log_lines(run_dir: Path, jobid: str) -> list[str]:
    """The job's own log lines: [hpcyuan-sbatch ...] of the batch script, [hpcyuan-submitit ...] of TrainJob."""
    return [line for line in job_output(run_dir, jobid).splitlines() if line.startswith(("[hpcyuan-sbatch",
                                                                                        "[hpcyuan-submitit"))]


def records_and_log(recs: list[dict], run_dir: Path, jobid: str) -> tuple[list[dict], str]:
    """The job's sacct records and its log lines, for asserting on both."""
    return recs, "\n".join(log_lines(run_dir, jobid))


def same_as_reference(run_dir: Path, reference: Path, bit_identical: bool = True) -> None:
    """The run ended where the uninterrupted one did (bit for bit on the same layout, losses within
    1e-5 on another), every sample trained once."""
    ours, ref = losses(run_dir), losses(reference)
    if bit_identical:
        assert ours == ref
        assert assert_bit_identical(run_dir, reference, STEPS) > 0
    else:
        assert ours.keys() == ref.keys()
        worst = max(abs(ours[s] - ref[s]) for s in ref)
        assert worst < 1e-5, {s: (ours[s], ref[s]) for s in ref if ours[s] != ref[s]}
    check_samples(run_dir, STEPS)


# ---------------------------------------------------------------------------------------------
# the workflows, for either executor: each checks what both must do and returns the job's log lines


def preempt_a_training_job(slurm, tmp_path, run_dir: Path, cleanup, high_seconds: int, executor: str):
    """A 4-node training job in `low`, preempted once it has logged 2 steps by a 2-node job in
    `normal` that runs `high_seconds`; returns (training job id, preemptor id, diagnostics).
    slurm.time is 20 minutes: submitit calls every signal of a job of <= 10 minutes "timed-out"."""
    slurm.wait_idle(4)
    vid = submit(run_dir, "slurm.partition=low", "slurm.nodes=4", "slurm.time=\"20\"", "slurm.signal_seconds=60",
                 "slurm.max_requeues=3", executor=executor)
    cleanup.append(vid)
    show = diagnostics(slurm, run_dir, vid)
    wait_for(lambda: steps_logged(run_dir) >= 2, 90, f"job {vid} training", show)
    hid = high_job(slurm, tmp_path, nodes=2, seconds=high_seconds)
    cleanup.append(hid)
    return vid, hid, show


def preempted_run(slurm, tmp_path, reference, cleanup, executor: str) -> str:
    """Preemption: signal -> checkpoint -> exit 75 -> requeue -> resume on 4 nodes -> done, bit-identical."""
    run_dir = tmp_path / "preempt"
    vid, hid, _ = preempt_a_training_job(slurm, tmp_path, run_dir, cleanup, 2, executor)
    recs, out = records_and_log(wait_done(slurm, vid, run_dir, timeout=150), run_dir, vid)
    assert [r["State"] for r in recs] == ["REQUEUED", "COMPLETED"], (recs, out)
    assert "preempted" in out and re.search(r"requeueing \(requeue \d of at most 3\)", out), out
    assert "training finished (exit 0)" in out, out
    assert all(r["NNodes"] == "4" and r["Partition"] == "low" for r in recs), recs
    text = job_output(run_dir, vid)
    assert "stopping at step" in text and "resumed" in text, text[-3000:]
    assert slurm.wait_final(hid)[-1]["State"] == "COMPLETED"
    high = (tmp_path / "high.log").read_text().split()
    # the preemptor ran between the two slots, long before GraceTime ran out
    assert float(high[1]) < time.mktime(time.strptime(recs[1]["Start"], "%Y-%m-%dT%H:%M:%S")) + 1, (high, recs)
    same_as_reference(run_dir, reference)
    return text


WALLTIME_TRAIN_S = 60  # seconds of training in the time-limit chain: > 2 slots of at most ~28 s each (measured)


def time_limit_chain(slurm, tmp_path, cleanup, executor: str) -> str:
    """--time=1 (Slurm's granularity is minutes; it checks limits about every 30 s, so the signal comes
    signal_seconds to ~signal_seconds + 30 s before the end): every slot trains ~12-28 s (start-up and
    the early signal take the rest), saves, exits 75 and is requeued. The run is sized to ~60 s of
    training at the speed measured here and now, so it needs 3 slots or more on a fast machine and on
    a loaded one (a fixed step count finished in one slot on a quiet machine). A slot may train as
    little as ~10 s (Slurm's 30-s limit checks can send the signal 15 s after the start, seen with
    submitit under load: 11 slots), hence up to 20 requeues."""
    steps = walltime_steps(slurm, tmp_path)
    run_dir = tmp_path / "walltime"
    jid = submit(run_dir, *WALLTIME_SETS, "slurm.max_requeues=20", steps=steps, executor=executor)
    cleanup.append(jid)
    recs, out = records_and_log(wait_done(slurm, jid, run_dir, timeout=900), run_dir, jid)
    states = [r["State"] for r in recs]
    assert len(states) >= 3 and set(states[:-1]) == {"REQUEUED"} and states[-1] == "COMPLETED", (recs, out)
    check_walltime_slots(run_dir, steps, out, len(states))
    return job_output(run_dir, jid)


WALLTIME_SETS = ["slurm.partition=normal", "slurm.nodes=1", "slurm.ranks_per_node=2", 'slurm.time="1"',
                 "slurm.signal_seconds=20", "train.global_batch_size=32"]


def walltime_steps(slurm, tmp_path: Path) -> int:
    """Steps for ~WALLTIME_TRAIN_S s of training at the speed measured here and now; waits for a node."""
    rate = steps_per_second(tmp_path / "speed")
    steps = max(40, int(rate * WALLTIME_TRAIN_S))
    print(f"measured {rate:.2f} steps/s with 2 ranks: {steps} steps, ~{WALLTIME_TRAIN_S} s of training")
    slurm.wait_idle(1)
    return steps


def check_walltime_slots(run_dir: Path, steps: int, out: str, slots: int) -> None:
    """Each slot but the last stopped for the time limit and handed over; the run trained every step
    and every sample once."""
    requeues = [line for line in out.splitlines() if "requeueing" in line]
    assert len(requeues) == slots - 1, out
    # told apart from a preemption: the limit was near when the signal came (or the run's own deadline)
    assert all("timed-out" in line or "time limit" in line for line in requeues), out
    assert "preempted" not in out, out
    assert steps_logged(run_dir) == steps
    r = subprocess.run([sys.executable, "-m", "hpcyuan", "data", "samples", str(run_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)  # reads the run's own config (batch 32)
    assert r.returncode == 0, r.stdout + r.stderr


def no_requeue_chain(slurm, tmp_path, cleanup, resume: str) -> None:
    """The walltime chain on a site that forbids requeue (site profile resume = singleton | array):
    `hpcyuan submit` submits max_requeues + 1 jobs at once (one name with --dependency=singleton, or
    --array=0-N%1, both --no-requeue); each slot trains, checkpoints before its limit and ends, the
    next starts and resumes; the one that finishes cancels the chain's jobs still pending."""
    steps = walltime_steps(slurm, tmp_path)
    site = tmp_path / f"local-{resume}.toml"
    local = (REPO / "slurm" / "sites" / "local.toml").read_text()
    site.write_text(local.replace('name = "local"', f'name = "local-{resume}"\nresume = "{resume}"', 1))
    run_dir = tmp_path / "walltime"
    ids = submit_jobs(run_dir, *WALLTIME_SETS, "slurm.max_requeues=12", steps=steps, site=str(site))
    cleanup.extend(ids)
    assert len(ids) == (13 if resume == "singleton" else 1), ids
    show = diagnostics(slurm, run_dir, ids[0])
    wait_for(lambda: not slurm.run("squeue", "-h", "-j", ",".join(ids), check=False).strip(), 900,
             f"the chain {ids[0]}... done", show)
    recs = [r for j in ids for r in slurm.wait_final(j)]
    ran = [r for r in recs if not r["State"].startswith("CANCELLED")]  # "CANCELLED by 0": never started
    assert len(ran) >= 3 and all(r["State"] == "COMPLETED" for r in ran), (recs, show())
    if resume == "singleton":
        assert len(recs) == 13, recs  # the rest were cancelled while pending
        out = "\n".join("\n".join(log_lines(run_dir, r["JobIDRaw"])) for r in ran)
    else:
        out = "\n".join(log_lines(run_dir, ids[0]))  # one log: slurm-%A.out
    assert "training finished" in out and "cancelled the chain's pending jobs" in out, out
    assert "scontrol requeue" not in out and "the next job of the chain resumes" in out, out
    check_walltime_slots(run_dir, steps, out, len(ran))


def steps_per_second(run_dir: Path) -> float:
    """Training speed of the walltime test's run (tiny, batch 32, 2 ranks, a checkpoint every 2
    steps: without them it measured 3x the speed in the job): 1 / the median step time of steps 3-12
    of a local `hpcyuan launch -n 2` (start-up excluded; a mean of 5 steps moved 2x between runs)."""
    training_runs.train(run_dir, 12, 1, 2, "--set", "train.global_batch_size=32", "--set", "checkpoint.interval=2")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r["kind"] == "train"}
    return 1 / statistics.median(elapsed[s] - elapsed[s - 1] for s in range(3, 13))


def resized_run(slurm, tmp_path, reference, cleanup, executor: str) -> str:
    """Elastic: preempted on 4 nodes; while the requeued job waits (~10 s, cred_expire) it is shrunk
    with `scontrol update NumNodes=2-2` (what a harvester does when only 2 nodes are free; a -N 2-4
    range was tried first: Slurm 22.05 then started even the first slot on 2 of 4 idle nodes). The
    preemptor keeps the other 2 nodes; the job runs dp = 2 instead of 4 and the checkpoint reshards
    on load."""
    run_dir = tmp_path / "elastic"
    vid, hid, show = preempt_a_training_job(slurm, tmp_path, run_dir, cleanup, 300, executor)
    wait_for(lambda: (lambda j: j.get("JobState") == "PENDING" and j.get("Restarts") == "1")(slurm.job(vid)), 60,
             f"job {vid} requeued", show)
    # min and max ("NumNodes=2" only lowers the minimum), and the tasks (4 tasks on 2 nodes of 1 each: BadConstraints)
    slurm.run("scontrol", "update", f"JobId={vid}", "NumNodes=2-2", "NumTasks=2")
    recs, out = records_and_log(wait_done(slurm, vid, run_dir, timeout=150), run_dir, vid)
    slurm.cancel(hid)
    assert [(r["State"], r["NNodes"]) for r in recs] == [("REQUEUED", "4"), ("COMPLETED", "2")], (recs, out)
    assert "pp 1 x dp 4" in out and "pp 1 x dp 2" in out, out
    same_as_reference(run_dir, reference, bit_identical=False)
    return out


def rank_pids(run_dir: Path, rank: int) -> list[int]:
    """The pids of training processes of this run with SLURM_PROCID == rank (first slot only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if (b"hpcyuan" in cmd and f"train.run_dir={run_dir}".encode() in cmd
                and env.get(b"SLURM_PROCID") == str(rank).encode()
                and env.get(b"SLURM_RESTART_COUNT", b"0") == b"0"):
            pids.append(int(proc.name))
    return pids


def killed_rank_run(slurm, tmp_path, reference, cleanup, executor: str) -> str:
    """Rank 2 killed with SIGKILL past the checkpoint of step 4: the slot fails, the job is requeued
    as a retry and ends bit-identical, resumed from that checkpoint (not from 0). 2 nodes x 2 ranks:
    the ranks of a node share an MPICH shared-memory segment, which the killed slot leaves behind
    under the name the requeued slot's ranks look for (docs/slurm.md: removed before they start)."""
    slurm.wait_idle(2)
    run_dir = tmp_path / "killed"
    jid = submit(run_dir, "slurm.partition=normal", "slurm.nodes=2", "slurm.ranks_per_node=2", "slurm.time=\"10\"",
                 "slurm.max_requeues=2", executor=executor)
    cleanup.append(jid)
    show = diagnostics(slurm, run_dir, jid)
    wait_for(lambda: steps_logged(run_dir) >= 5, 90, f"job {jid} training", show)
    pids = wait_for(lambda: rank_pids(run_dir, 2), 10, "rank 2's process", show)
    killed_at = steps_logged(run_dir)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    recs = wait_done(slurm, jid, run_dir, timeout=150)
    out = "\n".join(log_lines(run_dir, jid))
    assert [r["State"] for r in recs] == ["REQUEUED", "COMPLETED"], (recs, out)
    assert "failure (exit" in out and "requeueing (requeue 1 of at most 2)" in out, out
    assert killed_at < STEPS, "the run ended before the kill"
    text = job_output(run_dir, jid)
    assert "resumed" in text, text[-3000:]
    same_as_reference(run_dir, reference)
    return out


# ---------------------------------------------------------------------------------------------
# through the batch script (the default executor)


def test_preempted_job_checkpoints_requeues_and_ends_bit_identical(slurm, tmp_path, reference, cleanup):
    text = preempted_run(slurm, tmp_path, reference, cleanup, "sbatch")
    assert "SIGUSR2: preempted" in text, text[-3000:]  # the batch shell's trap saw the signal


def test_time_limit_chain_finishes_across_three_slots(slurm, tmp_path, shakespeare_512, cleanup):
    time_limit_chain(slurm, tmp_path, cleanup, "sbatch")


@pytest.mark.parametrize("resume", ["singleton", "array"])
def test_time_limit_chain_on_a_site_that_forbids_requeue(slurm, tmp_path, shakespeare_512, cleanup, resume):
    no_requeue_chain(slurm, tmp_path, cleanup, resume)


def test_preempted_on_four_nodes_resumes_on_two(slurm, tmp_path, reference, cleanup):
    resized_run(slurm, tmp_path, reference, cleanup, "sbatch")


def test_killed_rank_fails_the_slot_and_the_job_restarts_from_the_last_checkpoint(slurm, tmp_path, reference,
                                                                                  cleanup):
    killed_rank_run(slurm, tmp_path, reference, cleanup, "sbatch")
