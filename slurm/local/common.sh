# Shared by start.sh and stop.sh (sourced, not run): paths, pid-file checks, the lock, and stopping.
# shellcheck shell=bash disable=SC2034  # (variables for the scripts that source this)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$HERE/env.sh"                        # HPCYUAN_SLURM_DIR, SLURM_CONF
STATE=$HPCYUAN_SLURM_DIR
ETC=$STATE/etc                          # rendered slurm.conf, slurmdbd.conf, cgroup.conf (gres.conf)
RUN=$STATE/run                          # slurm pid files (owned by slurm)
LOG=$STATE/log
DB_DIR=$STATE/mysql                     # the cluster's own MariaDB datadir
DB_RUN=$STATE/mysql-run                 # its socket and pid file (owned by mysql)
DB_SOCK=$DB_RUN/mysqld.sock
MUNGE_PID=/run/munge/munged.pid         # munge is the machine's (its key and socket are where libmunge looks)
MUNGE_OURS=$STATE/munged.started-here   # stop.sh stops munged only when start.sh started it

say() { printf '[slurm] %s\n' "$*"; }
die() { printf '[slurm] ERROR: %s\n' "$*" >&2; exit 1; }

# alive PIDFILE NAME: the pid in PIDFILE is a live NAME process. Pitfall (notes): where PID 1 does not
# reap, the daemons' double fork leaves <defunct> entries, so `pgrep munged` matches a dead munged;
# only a non-zombie process with the right name counts (a stale file from a reboot may name a reused pid).
alive() {
    local pid st comm
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    read -r st comm < <(ps -o stat=,comm= -p "$pid" 2>/dev/null) || return 1
    [[ $st != Z* && $comm == "$2" ]]
}

# wait_gone PIDFILE NAME SECONDS: true once the process is gone (or a zombie).
wait_gone() {
    local i
    for ((i = 0; i < $3 * 5; i++)); do alive "$1" "$2" || return 0; sleep 0.2; done
    return 1
}

# kill_pidfile PIDFILE NAME SECONDS: SIGTERM, then SIGKILL after SECONDS; removes the pid file.
kill_pidfile() {
    if alive "$1" "$2"; then
        kill "$(cat "$1")" 2>/dev/null || true
        if ! wait_gone "$1" "$2" "$3"; then
            say "$2 ignored SIGTERM for $3 s: SIGKILL"
            kill -9 "$(cat "$1")" 2>/dev/null || true
            wait_gone "$1" "$2" 5 || true
        fi
    fi
    rm -f "$1"
}

# One start.sh/stop.sh at a time (pytest workers or two shells); the lock lives beside the state dir
# so that wiping the state dir does not drop it.
take_lock() {
    mkdir -p "$(dirname "$STATE")"
    exec 9>"$STATE.lock"
    flock -w 300 9 || die "another start.sh/stop.sh holds $STATE.lock for 300 s"
}

# ctld_ours: the slurmctld answering on our port is ours (its StateSaveLocation is ours), not the one
# of another cluster on the same port, which `scontrol ping` alone would take for ours.
ctld_ours() { scontrol show config 2>/dev/null | grep -Eq "^StateSaveLocation += $STATE/spool/slurmctld\$"; }

node_pidfiles() { ls "$RUN"/slurmd-*.pid 2>/dev/null || true; }

# Stop everything start.sh started. Pitfall (notes): stopping slurmd while jobs still run leaves their
# slurmstepd behind, so jobs are cancelled and waited for first.
stop_cluster() {
    local ids i f left
    if alive "$RUN/slurmctld.pid" slurmctld && ctld_ours; then
        ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${ids// /}" ]; then
            say "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for ((i = 0; i < 60; i++)); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
        fi
        scontrol shutdown >/dev/null 2>&1 || true     # slurmctld forwards it to every slurmd
        wait_gone "$RUN/slurmctld.pid" slurmctld 15 || true
    fi
    kill_pidfile "$RUN/slurmctld.pid" slurmctld 10
    for f in $(node_pidfiles); do kill_pidfile "$f" slurmd 10; done
    kill_pidfile "$RUN/slurmdbd.pid" slurmdbd 10
    kill_pidfile "$DB_RUN/mariadbd.pid" mariadbd 60   # InnoDB's clean shutdown takes ~1 s
    if [ -e "$MUNGE_OURS" ]; then
        kill_pidfile "$MUNGE_PID" munged 10
        rm -f "$MUNGE_OURS"
    fi
    # Job steps whose slurmd died under them (only reported: they belong to jobs, not to us).
    left=$(ps -eo pid=,stat=,comm=,args= | awk '$2 !~ /^Z/ && $3 == "slurmstepd"' || true)
    [ -z "$left" ] || printf '[slurm] warning: slurmstepd processes left:\n%s\n' "$left" >&2
}
