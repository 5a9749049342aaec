#!/usr/bin/env bash
# The main job, from a fresh clone, on this machine's CPUs (~6-7 minutes on 2 cores once installed):
#   1. install hpcyuan; build the Shakespeare tokenizer and token files offline;
#   2. train the `demo` Yuan 2.0 model on 4 MPI ranks (pp 2 x dp 2, ZeRO-1), checkpointing every 50
#      steps in the background;
#   3. at step 100 stop it the way a cluster does: every rank agrees at the next step, the job saves
#      and exits 75 ("requeue me");
#   4. resume the same run on fewer ranks, another layout, which reshards the checkpoint on load, and
#      train to step 200;
#   5. check from the sample log that every sample was trained exactly once across the two layouts,
#      list the checkpoints, and sample some text from the final one.
#
# Where Slurm can be used (the local test cluster of slurm/local is up, or can be installed and
# started: root and Debian's apt), steps 2-4 run through it: `hpcyuan submit` puts the job in the
# preemptible partition `low` on 4 nodes x 1 rank; at step 100 a job in `normal` takes 2 of its nodes
# (a real preemption: Slurm signals the job, it saves, exits 75 and requeues itself); the requeued job
# is shrunk to the 2 free nodes, as a harvester would, and resumes there as pp 2 x dp 1. Elsewhere the
# ranks run under mpiexec: SIGUSR2 by hand at step 100, resumed on 3 ranks (pp 3 x dp 1).
#
#   bash workflows/demo.sh [--slurm | --mpiexec] [--set section.field=value ...]
#     (default: Slurm when usable, else mpiexec; extra settings go to every run)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=auto
case "${1:-}" in
    --slurm | --mpiexec) mode=${1#--}; shift ;;
esac

say() { echo "[demo] $*"; }

# The local cluster's partitions answer (started earlier, or started now where this may install it).
slurm_usable() {
    [ -f slurm/local/env.sh ] && . slurm/local/env.sh
    [ -f "$SLURM_CONF" ] || unset SLURM_CONF
    if ! sinfo -h -p low,normal -o %P >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ] || return 1
        say "starting the local Slurm cluster (slurm/local: install.sh, start.sh)"
        bash slurm/local/install.sh >/dev/null && bash slurm/local/start.sh | tail -n 1 || return 1
    fi
    [ "$(sinfo -h -p low,normal -o %P | sort -u | tr -d '*\n')" = "lownormal" ]
}

if [ "$mode" = auto ]; then
    if slurm_usable; then mode=slurm; else mode=mpiexec; fi
elif [ "$mode" = slurm ] && ! slurm_usable; then
    say "--slurm: no usable Slurm (the local cluster needs root and Debian's apt: slurm/local/README.md)" >&2
    exit 1
fi

bash scripts/install.sh
hpcyuan=.venv/bin/hpcyuan
$hpcyuan data prepare --config demo
run=runs/demo
rm -rf "$run"  # the story starts afresh every time
mkdir -p "$run"

job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }

# wait_for WHAT TIMEOUT_S COMMAND...: run COMMAND every 2 s until it succeeds; a progress line every 30 s
wait_for() {
    local what=$1 timeout=$2 t=0
    shift 2
    until "$@"; do
        if ((t >= timeout)); then say "gave up waiting for $what after ${timeout}s" >&2; exit 1; fi
        if ((t % 30 == 0 && t > 0)); then say "still waiting for $what (${t}s): $(squeue -h -o '%i %P %T %D %R' 2>/dev/null | tr '\n' ';')"; fi
        sleep 2
        t=$((t + 2))
    done
}

# job_running JOB WHAT: false while JOB waits; ends the demo if JOB has ended
job_running() {
    local state
    state=$(job_state "$1")
    case "$state" in
        RUNNING | COMPLETING) return 0 ;;
        PENDING | REQUEUED | CONFIGURING | "") return 1 ;;
        *) say "job $1 is $state, not running: see $out" >&2; exit 1 ;;
    esac
}
at_step_100() { grep -q "^step 100/" "$out" 2>/dev/null || { job_running "$jid"; return 1; }; }
requeued() { [ "$(job_field "$jid" Restarts)" = 1 ]; }

jid="" hid="" out="" tail_pid=""
slurm_story() {
    say "Slurm: $(sinfo -h -o '%P %D %N' | tr '\n' ' ')(normal preempts low)"
    say "part 1: job in partition low on 4 nodes x 1 rank (pp 2 x dp 2); at step 100 a job in partition normal takes 2 of its nodes"
    jid=$($hpcyuan submit --config demo --site local --job-name hpcyuan-demo --set slurm.partition=low \
        --set slurm.nodes=4 --set 'slurm.time="30"' --set slurm.max_requeues=3 "$@")
    out="$run/slurm-$jid.out"
    trap 'scancel $jid $hid 2>/dev/null; [ -z "$tail_pid" ] || kill $tail_pid 2>/dev/null' EXIT
    say "job $jid submitted; its output, all slots: $out"
    wait_for "job $jid to start" 600 job_running "$jid"
    tail -n +1 -F "$out" 2>/dev/null &
    tail_pid=$!
    wait_for "step 100 of job $jid" 900 at_step_100
    hid=$(sbatch --parsable -p normal -N 2 --exclusive -t 15 -J demo-preemptor -o /dev/null --wrap 'sleep 900')
    say "job $hid (partition normal, 2 nodes) submitted: Slurm preempts job $jid, which checkpoints and requeues itself"
    wait_for "job $jid to be requeued" 300 requeued
    say "job $jid requeued; 2 nodes are free: shrinking it to them (scontrol update NumNodes=2-2), as a harvester would"
    scontrol update JobId="$jid" NumNodes=2-2 NumTasks=2
    say "part 2: job $jid resumes on 2 nodes x 1 rank (pp 2 x dp 1) once Slurm starts it again (~10 s)"
    wait_for "job $jid to finish" 1200 grep -q -e "training finished" -e "giving up" -e "not retried" "$out"
    sleep 1
    kill "$tail_pid" 2>/dev/null || true
    tail_pid=""
    scancel "$hid"
    if ! grep -q "training finished" "$out"; then say "job $jid did not finish: see $out" >&2; exit 1; fi
    say "the job's slots (sacct):"
    sacct -D -X -j "$jid" -o JobID,Partition,State,NNodes,NodeList,Start,End
}

mpiexec_story() {
    local log="$run/part1.log" job status=0
    say "part 1: 4 ranks (pp 2 x dp 2); a stop signal comes at step 100"
    $hpcyuan launch -n 4 -- train --config demo "$@" > >(tee "$log") 2>&1 &
    job=$!
    until grep -q "^step 100/" "$log" 2>/dev/null || ! kill -0 "$job" 2>/dev/null; do sleep 1; done
    say "sending SIGUSR2 to the job, as Slurm does ahead of a time limit (hpcyuan launch passes it to the ranks as SIGTERM)"
    kill -USR2 "$job" 2>/dev/null || true
    wait "$job" || status=$?
    if [ "$status" -ne 75 ]; then
        say "the job ended with status $status, expected 75 (saved, requeue): see $log" >&2
        exit 1
    fi
    say "part 2: the same run resumed on 3 ranks (pp 3 x dp 1)"
    $hpcyuan launch -n 3 -- train --config demo --set parallel.pp=3 --set parallel.dp=1 "$@"
}

"${mode}_story" "$@"

say "what the run left behind"
$hpcyuan data samples "$run"
$hpcyuan ckpt list "$run/checkpoints"
$hpcyuan generate --ckpt "$run/checkpoints" --prompt "ROMEO:" --tokens 60
