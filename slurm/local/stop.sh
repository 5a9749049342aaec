#!/usr/bin/env bash
# Stop the local test cluster started by start.sh (idempotent; ~2-5 s). Running jobs are cancelled first.
#
#   bash slurm/local/stop.sh           # keep the state dir: job ids and sacct history survive
#   bash slurm/local/stop.sh --wipe    # and delete it: the next start.sh is a fresh cluster (job ids from 1)
#
# Only processes named in our pid files are stopped (never by name); munged only if start.sh started it.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

wipe=0
for a in "$@"; do
    case $a in
        --wipe) wipe=1 ;;
        -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
        *) die "unknown argument $a (use --wipe)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "stop.sh must run as root"
if [ ! -d "$STATE" ]; then
    say "not running (no $STATE)"
    exit 0
fi
take_lock
stop_cluster
if [ "$wipe" = 1 ]; then
    rm -rf "$STATE"
    # MPICH's shared-memory segments of ranks killed in the fake nodes' jobs (named by job id, which
    # starts again from 1 on a fresh cluster: slurm/train.sbatch)
    rm -f /dev/shm/mpich_shm_* /dev/shm/mpich_vci_*
    # a link left by start.sh would now point nowhere
    if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$STATE"/* ]]; then rm -f /etc/slurm/slurm.conf; fi
    say "stopped; state dir $STATE removed"
else
    say "stopped (state kept in $STATE)"
fi
