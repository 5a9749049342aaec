#!/usr/bin/env bash
# The main job, from a fresh clone, on this machine's CPUs (~6 minutes on 2 cores once installed):
#   1. install hpcyuan; build the Shakespeare tokenizer and token files offline;
#   2. train the `demo` Yuan 2.0 model on 4 MPI ranks (pp 2 x dp 2, ZeRO-1), checkpointing every 50
#      steps in the background;
#   3. at step 100 send it SIGUSR2, what Slurm sends before a job's time limit: every rank agrees at
#      the next step, the job saves and exits 75 ("requeue me");
#   4. resume the same run on 3 ranks (pp 3 x dp 1; the planner splits the 4 layers 1-2-1), which
#      reshards the checkpoint on load, and train to step 200;
#   5. check from the sample log that every sample was trained exactly once across the two layouts,
#      list the checkpoints, and sample some text from the final one.
#
#   bash workflows/demo.sh [--set section.field=value ...]     (extra settings go to both runs)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
hpcyuan=.venv/bin/hpcyuan
$hpcyuan data prepare --config demo
run=runs/demo
rm -rf "$run"  # the story starts afresh every time
mkdir -p "$run"
log="$run/part1.log"

echo "[demo] part 1: 4 ranks (pp 2 x dp 2); a stop signal comes at step 100"
$hpcyuan launch -n 4 -- train --config demo "$@" > >(tee "$log") 2>&1 &
job=$!
until grep -q "^step 100/" "$log" 2>/dev/null || ! kill -0 "$job" 2>/dev/null; do sleep 1; done
echo "[demo] sending SIGUSR2 to the job, as Slurm does ahead of a time limit (hpcyuan launch passes it to the ranks as SIGTERM)"
kill -USR2 "$job" 2>/dev/null || true
status=0
wait "$job" || status=$?
if [ "$status" -ne 75 ]; then
    echo "[demo] the job ended with status $status, expected 75 (saved, requeue): see $log" >&2
    exit 1
fi

echo "[demo] part 2: the same run resumed on 3 ranks (pp 3 x dp 1)"
$hpcyuan launch -n 3 -- train --config demo --set parallel.pp=3 --set parallel.dp=1 "$@"

echo "[demo] what the run left behind"
$hpcyuan data samples "$run"
$hpcyuan ckpt list "$run/checkpoints"
$hpcyuan generate --ckpt "$run/checkpoints" --prompt "ROMEO:" --tokens 60
