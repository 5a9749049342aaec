"""The local Slurm cluster of slurm/local behaves like the clusters hpcyuan harvests: two partitions,
multi-node jobs with accounting, and preemption of the low partition with a signal first and a requeue.

Real daemons, real jobs (the `slurm` fixture of conftest.py starts them); ~30 s in all.
"""

import time
from pathlib import Path

NODES = [f"node{i}" for i in range(1, 5)]


def write_script(path: Path, body: str) -> Path:
    # bash, not sbatch --wrap (that is /bin/sh)
    path.write_text("#!/bin/bash\n" + body)
    return path


def wait_for(predicate, timeout: float, what: str, *context):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen after {timeout} s\n" + "\n".join(str(c() if callable(c) else c) for c in context))
        time.sleep(0.2)
    return value


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_sinfo_shows_both_partitions_and_the_nodes(slurm):
    parts = {}
    for line in slurm.run("sinfo", "-h", "-o", "%P %a %D %N").splitlines():
        name, avail, count, nodelist = line.split()
        parts[name] = (avail, int(count), nodelist)
    assert parts == {"normal*": ("up", 4, "node[1-4]"), "low": ("up", 4, "node[1-4]")}, parts

    nodes = {}
    for line in slurm.run("sinfo", "-h", "-N", "-o", "%N %c %P").splitlines():
        name, cpus, _ = line.split()
        nodes[name] = int(cpus)
    assert nodes == {n: 2 for n in NODES}, nodes

    normal = slurm.run("scontrol", "show", "partition", "normal")
    low = slurm.run("scontrol", "show", "partition", "low")
    assert "PriorityTier=10" in normal and "PreemptMode=OFF" in normal and "Default=YES" in normal, normal
    assert "PriorityTier=1 " in low and "PreemptMode=REQUEUE" in low and "GraceTime=30" in low, low
    config = slurm.run("scontrol", "show", "config")
    assert "preempt_send_user_signal" in config and "preempt/partition_prio" in config


def test_srun_has_the_pmi2_plugin(slurm):
    # MPI under srun goes through PMI2 (the PyPI mpich wheel); MpiDefault=pmi2 in slurm.conf
    out = slurm.run("srun", "--mpi=list")
    assert "pmi2" in out.split(), out
    assert "MpiDefault              = pmi2" in slurm.run("scontrol", "show", "config")


def test_two_node_job_completes_and_sacct_reports_it(slurm, tmp_path):
    slurm.wait_idle(2)
    script = write_script(tmp_path / "job.sh", 'srun --ntasks-per-node=1 bash -c \'echo "$SLURMD_NODENAME $SLURM_PROCID $SLURM_NNODES"\'\n')
    jobid = slurm.sbatch(script, "-p", "normal", "-N", "2", "-t", "2", "-J", "two-nodes",
                         "-D", str(tmp_path), "-o", str(tmp_path / "out"))
    try:
        recs = slurm.wait_final(jobid, timeout=60)
    finally:
        slurm.cancel(jobid)
    assert len(recs) == 1, recs
    rec = recs[0]
    assert (rec["State"], rec["ExitCode"], rec["NNodes"], rec["Partition"]) == ("COMPLETED", "0:0", "2", "normal"), rec
    ranks = sorted(lines(tmp_path / "out"))
    assert [r[1:] for r in ranks] == [["0", "2"], ["1", "2"]], ranks
    assert len({r[0] for r in ranks}) == 2 and {r[0] for r in ranks} <= set(NODES), ranks


# The victim of the preemption tests: its --signal (B:USR1, to the batch shell) arrives at preemption
# because slurm.conf has SlurmctldParameters=preempt_send_user_signal; the `sleep & wait` loop lets the
# trap run at once (bash defers traps while a foreground child runs).
VICTIM = """\
d={marks}
n=${{SLURM_RESTART_COUNT:-0}}
echo "start $n $EPOCHREALTIME $SLURM_JOB_NODELIST" >> $d/victim.log
if [ "$n" -ge 1 ]; then echo "done $n $EPOCHREALTIME" >> $d/victim.log; exit 0; fi
on_signal() {{
    echo "signal $1 $n $EPOCHREALTIME" >> $d/victim.log
    {on_signal}
    exit 0
}}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
while :; do sleep 0.5 & wait $!; done
"""
HIGH = """\
echo "start $EPOCHREALTIME $SLURM_JOB_NODELIST" >> {marks}/high.log
sleep 2
echo "end $EPOCHREALTIME" >> {marks}/high.log
"""


def preempt(slurm, tmp_path, on_signal: str):
    """Run an all-node victim in `low`, preempt it with a 2-node job in `normal`; returns (victim, high) ids."""
    slurm.wait_idle(4)
    victim = write_script(tmp_path / "victim.sh", VICTIM.format(marks=tmp_path, on_signal=on_signal))
    high = write_script(tmp_path / "high.sh", HIGH.format(marks=tmp_path))
    log = tmp_path / "victim.log"
    vid = slurm.sbatch(victim, "-p", "low", "-N", "4", "--exclusive", "--requeue", "--signal=B:USR1@60",
                       "-t", "10", "-J", "victim", "-D", str(tmp_path), "-o", str(tmp_path / "victim.out"),
                       "--open-mode=append")
    try:
        wait_for(lambda: any(r[0] == "start" for r in lines(log)), 30, f"victim {vid} running", slurm.queue)
        submitted = time.time()
        hid = slurm.sbatch(high, "-p", "normal", "-N", "2", "-t", "2", "-J", "high",
                           "-D", str(tmp_path), "-o", str(tmp_path / "high.out"))
    except BaseException:
        slurm.cancel(vid)
        raise
    return vid, hid, submitted


def test_preempted_job_gets_its_signal_requeues_and_runs_again(slurm, tmp_path):
    # The pattern a preemptible job must follow (notes: "a preempted job that exits by itself during the
    # grace period ends COMPLETED and is NOT requeued"): on the signal, checkpoint, then requeue itself
    # with `scontrol requeue` and exit. The preemptor then starts at once, not after GraceTime.
    vid, hid, submitted = preempt(slurm, tmp_path, on_signal="scontrol requeue $SLURM_JOB_ID")
    log = tmp_path / "victim.log"
    try:
        wait_for(lambda: any(r[0] == "done" for r in lines(log)), 60, f"victim {vid} run again",
                 slurm.queue, lambda: log.read_text())
        high_recs = slurm.wait_final(hid)
        victim_recs = slurm.wait_final(vid)
    finally:
        slurm.cancel(vid, hid)

    events = lines(log)
    kinds = [e[0] for e in events]
    assert kinds == ["start", "signal", "start", "done"], events
    signal = events[1]
    assert signal[1:3] == ["USR1", "0"], f"the batch script should get its --signal at preemption: {events}"
    high = lines(tmp_path / "high.log")
    assert [h[0] for h in high] == ["start", "end"], high
    t_signal, t_high_start, t_high_end, t_restart = float(signal[3]), float(high[0][1]), float(high[1][1]), float(events[2][2])
    # order: signal to the victim, then the preemptor runs, then the victim again (it needs all 4 nodes)
    assert t_signal <= t_high_start <= t_high_end <= t_restart, (events, high)
    # the self-requeue frees the nodes at once, well before GraceTime=30 s
    assert t_high_start - submitted < 15, (submitted, t_high_start)
    assert events[2][1] == "1" and events[2][3] == "node[1-4]", events

    assert high_recs[-1]["State"] == "COMPLETED" and high_recs[-1]["ExitCode"] == "0:0", high_recs
    states = [r["State"] for r in victim_recs]
    assert len(states) == 2 and states[0] in ("REQUEUED", "PREEMPTED") and states[1] == "COMPLETED", victim_recs
    assert victim_recs[-1]["ExitCode"] == "0:0", victim_recs
    info = slurm.job(vid)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1" and info["Requeue"] == "1", info


def test_preempted_job_that_just_exits_is_not_requeued(slurm, tmp_path):
    # The pitfall itself, kept as a regression check of the notes: a victim that exits (0) on its signal
    # during the grace time ends COMPLETED and never comes back, although it was submitted --requeue.
    vid, hid, _ = preempt(slurm, tmp_path, on_signal=":")
    try:
        victim_recs = slurm.wait_final(vid)
        slurm.wait_final(hid)
    finally:
        slurm.cancel(vid, hid)
    assert [e[0] for e in lines(tmp_path / "victim.log")] == ["start", "signal"]
    assert [(r["State"], r["ExitCode"]) for r in victim_recs] == [("COMPLETED", "0:0")], victim_recs
    info = slurm.job(vid)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", info
