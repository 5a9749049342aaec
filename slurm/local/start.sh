#!/usr/bin/env bash
# Start a real single-machine Slurm (22.05, Debian 12) on localhost: munged, a private MariaDB,
# slurmdbd (sacct), slurmctld and one slurmd per fake node. Run slurm/local/install.sh first (as root).
#
#   bash slurm/local/start.sh         # ~3 s (a new state dir: 3-8 s; already up: ~0.4 s)
#   . slurm/local/env.sh              # SLURM_CONF for the client commands (or use /etc/slurm/slurm.conf, see below)
#
# Idempotent: when everything is up and the config is unchanged it says so and exits 0; daemons that
# died are started again; a changed config (e.g. another HPCYUAN_SLURM_NODES) restarts the cluster.
# State (configs, logs, pid files, slurmctld state, the accounting DB) lives in $HPCYUAN_SLURM_DIR
# (default /var/tmp/hpcyuan-slurm); it survives stop.sh, so job ids keep counting up across restarts.
#
# Settings (environment):
#   HPCYUAN_SLURM_NODES=4      fake nodes node[1-N], one slurmd each (ports 17001..)
#   HPCYUAN_SLURM_CPUS=2       CPUs each node advertises (may exceed the real cores)
#   HPCYUAN_SLURM_MEM_MB=2000  RealMemory per node (not a consumable here, CR_Core)
#   HPCYUAN_SLURM_GPUS=0       fake GPUs per node (character devices like /dev/null; needs mknod)
#   HPCYUAN_SLURM_GRACE=30     GraceTime of the preemptible partition `low`, seconds
#   HPCYUAN_SLURM_KILL_WAIT=10 SIGTERM -> SIGKILL delay, seconds
#   HPCYUAN_SLURM_CTLD_PORT=6817 HPCYUAN_SLURM_DBD_PORT=6819 HPCYUAN_SLURM_DB_PORT=16819 (MariaDB, 127.0.0.1)
#   HPCYUAN_SLURM_LINK_ETC=1   link /etc/slurm/slurm.conf to the rendered config when that path is free
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

NNODES=${HPCYUAN_SLURM_NODES:-4}
NCPUS=${HPCYUAN_SLURM_CPUS:-2}
MEM_MB=${HPCYUAN_SLURM_MEM_MB:-2000}
NGPUS=${HPCYUAN_SLURM_GPUS:-0}
GRACE=${HPCYUAN_SLURM_GRACE:-30}
KILL_WAIT=${HPCYUAN_SLURM_KILL_WAIT:-10}
CTLD_PORT=${HPCYUAN_SLURM_CTLD_PORT:-6817}
DBD_PORT=${HPCYUAN_SLURM_DBD_PORT:-6819}
DB_PORT=${HPCYUAN_SLURM_DB_PORT:-16819}
NODE_PORT0=17000
for v in NNODES NCPUS MEM_MB NGPUS GRACE KILL_WAIT CTLD_PORT DBD_PORT DB_PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} is not a number"
done
((NNODES >= 1)) || die "HPCYUAN_SLURM_NODES must be >= 1"

T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
# launch CMD...: start a daemon detached from our stdout (so a caller capturing it, like pytest's
# subprocess.run, does not wait for the daemons' end) and from the lock's fd 9 (a daemon inheriting it
# would hold the lock for its whole life and the next start.sh/stop.sh would wait for it).
launch() { "$@" </dev/null >/dev/null 2>&1 9>&-; }
# wait_up SECONDS CHECK LIVE: poll the command string CHECK until it succeeds; give up at once when,
# after 2 s, the command string LIVE says the daemon died (a port in use, a bad config: its log says why).
wait_up() {
    local i
    for ((i = 0; i < $1 * 5; i++)); do
        eval "$2" >/dev/null 2>&1 && return 0
        if ((i >= 10)) && ! eval "$3"; then return 1; fi
        sleep 0.2
    done
    return 1
}
all_slurmd_alive() { local n; for n in $NAMES; do alive "$RUN/slurmd-$n.pid" slurmd || return 1; done; }
# tail_logs FILE...: the end of each log, for error messages
tail_logs() { local f; for f in "$@"; do [ -f "$f" ] && { echo "--- tail of $f"; tail -n 25 "$f"; }; done >&2; return 0; }

[ "$(id -u)" = 0 ] || die "start.sh must run as root (it starts munged, MariaDB and the slurm daemons)"
for c in slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sinfo sacct; do
    command -v "$c" >/dev/null || die "$c not found: run 'bash $HERE/install.sh' first"
done
take_lock

NODES="node[1-$NNODES]"
[ "$NNODES" = 1 ] && NODES=node1
NAMES=$(seq -f 'node%g' 1 "$NNODES")

# ---- configs: rendered to *.new, compared with what the running cluster uses -----------------------
mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/spool/slurmctld" "$DB_RUN"
chown slurm:slurm "$RUN" "$LOG" "$STATE/spool/slurmctld"
chmod 755 "$STATE" "$ETC" "$RUN" "$LOG"
chown mysql:mysql "$DB_RUN"
if ((NGPUS > 0)); then
    mkdir -p "$STATE/fakegpu"
    for ((i = 0; i < NGPUS; i++)); do
        [ -c "$STATE/fakegpu/gpu$i" ] || mknod "$STATE/fakegpu/gpu$i" c 1 3 \
            || die "mknod failed (no CAP_MKNOD?): run with HPCYUAN_SLURM_GPUS=0"
    done
    GRES_TYPES="GresTypes=gpu"; NODE_GRES=" Gres=gpu:$NGPUS"
else
    GRES_TYPES="# no fake GPUs (HPCYUAN_SLURM_GPUS=0)"; NODE_GRES=""
fi
if [ "$NNODES" = 1 ]; then PORTS=$((NODE_PORT0 + 1)); else PORTS="[$((NODE_PORT0 + 1))-$((NODE_PORT0 + NNODES))]"; fi
# Fake nodes: every node is this host (NodeHostname/NodeAddr), each slurmd on its own port and
# started as `slurmd -N nodeX`; %n keeps their spool/pid/log paths apart. Debian's build needs no
# multiple-slurmd option for this.
NODE_LINE="NodeName=$NODES NodeHostname=localhost NodeAddr=127.0.0.1 Port=$PORTS CPUs=$NCPUS RealMemory=$MEM_MB$NODE_GRES State=UNKNOWN"

render() {   # render TEMPLATE OUT
    sed -e "s|@STATE@|$STATE|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$((NODE_PORT0 + 1))|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@KILL_WAIT@|$KILL_WAIT|g" \
        -e "s|@GRACE@|$GRACE|g" -e "s|@NODES@|$NODES|g" -e "s|@NODE_LINE@|$NODE_LINE|g" \
        -e "s|@GRES_TYPES@|$GRES_TYPES|g" "$1" >"$2"
}
render "$HERE/slurm.conf.in" "$ETC/slurm.conf.new"
render "$HERE/slurmdbd.conf.in" "$ETC/slurmdbd.conf.new"
render "$HERE/cgroup.conf.in" "$ETC/cgroup.conf.new"
if ((NGPUS > 0)); then
    echo "NodeName=$NODES Name=gpu File=$STATE/fakegpu/gpu[0-$((NGPUS - 1))]" >"$ETC/gres.conf.new"
else
    echo "# no fake GPUs (HPCYUAN_SLURM_GPUS=0)" >"$ETC/gres.conf.new"
fi
changed=0
for f in slurm.conf slurmdbd.conf cgroup.conf gres.conf; do
    cmp -s "$ETC/$f.new" "$ETC/$f" || changed=1
done

any_up() {
    local f
    alive "$RUN/slurmctld.pid" slurmctld || alive "$RUN/slurmdbd.pid" slurmdbd && return 0
    for f in $(node_pidfiles); do alive "$f" slurmd && return 0; done
    return 1
}

# nodes_state: the distinct states of our nodes, e.g. "idle" or "down* idle"
nodes_state() { sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//'; }
nodes_ok() {   # every node is up: idle, or running jobs
    local st
    st=$(nodes_state)
    [ -n "$st" ] || return 1
    for s in $st; do case $s in idle | mixed | allocated | completing) ;; *) return 1 ;; esac; done
    [ "$(sinfo -h -N -o %N 2>/dev/null | sort -u | wc -l)" = "$NNODES" ]
}
healthy() {
    local n
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || return 1
    alive "$DB_RUN/mariadbd.pid" mariadbd && alive "$RUN/slurmdbd.pid" slurmdbd || return 1
    alive "$RUN/slurmctld.pid" slurmctld && ctld_ours || return 1
    for n in $NAMES; do alive "$RUN/slurmd-$n.pid" slurmd || return 1; done
    nodes_ok && sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1
}

summary() {
    local parts nst cpus
    parts=$(sinfo -h -o '%P' | tr '\n' ' ' | sed 's/ $//')
    nst=$(sinfo -h -N -p normal -o %T | sort | uniq -c | awk '{printf "%s%s %s", (NR>1?", ":""), $1, $2}')
    cpus=$(sinfo -h -N -p normal -o %c | sort -u | tr '\n' '/' | sed 's|/$||')
    echo "[slurm] $1: partitions [$parts] (normal: default, preempts low; low: PreemptMode=REQUEUE GraceTime=${GRACE}s)" \
        "| nodes $NODES x $cpus CPUs: $nst | sacct ok | SLURM_CONF=$SLURM_CONF"
}

if [ "$changed" = 0 ] && healthy; then
    rm -f "$ETC"/*.new
    summary "already running"
    exit 0
fi
if [ "$changed" = 1 ] && any_up; then
    say "config changed: stopping the running cluster first"
    stop_cluster
fi
for f in slurm.conf slurmdbd.conf cgroup.conf gres.conf; do mv -f "$ETC/$f.new" "$ETC/$f"; done
chmod 644 "$ETC/slurm.conf" "$ETC/cgroup.conf" "$ETC/gres.conf"
# slurmdbd refuses a slurmdbd.conf not owned by SlurmUser or readable by others (it holds the DB password).
chown slurm:slurm "$ETC/slurmdbd.conf"
chmod 600 "$ETC/slurmdbd.conf"

# /etc/slurm/slurm.conf is where the client commands look without SLURM_CONF: link it when free (or
# already ours); a foreign file there is left alone and env.sh is needed.
if [ "${HPCYUAN_SLURM_LINK_ETC:-1}" = 1 ] && [ -d /etc/slurm ]; then
    if [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ] \
        || [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$STATE"/* ]]; then
        ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    else
        say "note: /etc/slurm/slurm.conf is not ours; source $HERE/env.sh (SLURM_CONF) to reach this cluster"
    fi
fi

# ---- munge -----------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then    # normally made by the package's postinst
        mungekey --create --force
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    launch runuser -u munge -- /usr/sbin/munged || true
    touch "$MUNGE_OURS"
    for ((i = 0; i < 50; i++)); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { tail_logs /var/log/munge/munged.log; die "munged does not answer"; }
fi

# ---- MariaDB (private datadir, TCP on 127.0.0.1:$DB_PORT only) for slurmdbd ---------------------------
# Its own datadir keeps the accounting records with the slurmctld state they belong to: wiping the
# state dir (stop.sh --wipe) resets both, so new job ids never meet old records.
if [ ! -e "$DB_DIR/.hpcyuan-ready" ]; then
    rm -rf "$DB_DIR"                           # a half-made datadir from an interrupted first start
    mkdir -p "$DB_DIR" && chown mysql:mysql "$DB_DIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || { tail_logs "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
    fresh_db=1
else
    fresh_db=0
fi
DB_LOG=$LOG/mariadb.log
touch "$DB_LOG" && chown mysql:mysql "$DB_LOG"
dbq() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }
# shellcheck disable=SC2016  # (the LIVE/CHECK strings of wait_up are evaluated there)
db_live='alive "$DB_RUN/mariadbd.pid" mariadbd'
if ! alive "$DB_RUN/mariadbd.pid" mariadbd; then
    # mariadbd does not daemonize: `setsid cmd &` puts it in its own session and $! is its pid (its pid
    # file appears only once InnoDB is up); detached like `launch` does (not through it: a backgrounded
    # function would leave a bash holding the lock's fd as mariadbd's parent)
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" \
        --pid-file="$DB_RUN/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --log-error="$DB_LOG" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 9>&- &
    db_live="ps -o stat= -p $! | grep -qv '^Z'"
fi
wait_up 30 "dbq -e 'select 1'" "$db_live" || { tail_logs "$DB_LOG"; die "MariaDB did not come up on $DB_SOCK"; }
if [ "$fresh_db" = 1 ]; then
    dbq -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'hpcyuan-local';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    touch "$DB_DIR/.hpcyuan-ready"
fi

# ---- slurmdbd --------------------------------------------------------------------------------------
# slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF. No `sacctmgr add cluster` is needed:
# slurmctld registers the cluster on its first start; no associations either (no AccountingStorageEnforce).
if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
    launch slurmdbd || { tail_logs "$LOG/slurmdbd.log"; die "slurmdbd failed to start"; }
fi
# shellcheck disable=SC2016
wait_up 20 "sacctmgr -n show cluster" 'alive "$RUN/slurmdbd.pid" slurmdbd' || { tail_logs "$LOG/slurmdbd.log" "$DB_LOG"; die "slurmdbd does not answer (sacctmgr show cluster)"; }

# ---- slurmctld + one slurmd per fake node ------------------------------------------------------------
if ! alive "$RUN/slurmctld.pid" slurmctld; then
    launch slurmctld -f "$SLURM_CONF" || { tail_logs "$LOG/slurmctld.log"; die "slurmctld failed to start"; }
fi
# shellcheck disable=SC2016
wait_up 20 ctld_ours 'alive "$RUN/slurmctld.pid" slurmctld' || { tail_logs "$LOG/slurmctld.log"; die "slurmctld does not answer (scontrol show config: not up, or another cluster on port $CTLD_PORT)"; }
for n in $NAMES; do
    mkdir -p "$STATE/spool/slurmd-$n"
    if ! alive "$RUN/slurmd-$n.pid" slurmd; then
        # -N: the node name; the real hostname (e.g. "vm") is no NodeName here
        launch slurmd -f "$SLURM_CONF" -N "$n" || { tail_logs "$LOG/slurmd-$n.log"; die "slurmd -N $n failed to start"; }
    fi
done
for ((i = 0; i < 150; i++)); do
    nodes_ok && break
    ((i < 10)) || all_slurmd_alive || break
    # ReturnToService=2 brings DOWN nodes back when their slurmd registers; a node left drained or
    # down by an earlier run (e.g. killed slurmd) is resumed here
    case " $(nodes_state) " in *drain* | *" down "* | *inval* | *fail*)
        scontrol update nodename="$NODES" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
if ! nodes_ok; then
    sinfo -N >&2 || true
    for n in $NAMES; do logs+=("$LOG/slurmd-$n.log"); done
    tail_logs "$LOG/slurmctld.log" "${logs[@]}"
    die "nodes not up: $(nodes_state) (slurmd alive for every node: $(all_slurmd_alive && echo yes || echo no))"
fi
for ((i = 0; i < 50; i++)); do sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1 && break; sleep 0.2; done
sacct -n -X -S now-1minutes -o JobID >/dev/null || { tail_logs "$LOG/slurmdbd.log"; die "sacct does not answer"; }
summary "up in $(elapsed)"
