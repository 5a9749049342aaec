#!/usr/bin/env bash
# Install the Debian packages of the local test cluster (idempotent; one line and ~0.1 s when present).
#
#   bash slurm/local/install.sh        # as root, Debian 12 (bookworm): slurm 22.05, munge, slurmdbd, mariadb
#
# Cold on a 2-core CI machine: ~15 s (apt-get update + ~31 packages). Nothing is started here, see start.sh.
set -euo pipefail

say() { printf '[slurm-install] %s\n' "$*"; }
die() { printf '[slurm-install] ERROR: %s\n' "$*" >&2; exit 1; }

# procps: ps (start/stop check pid files with it); util-linux (setsid, runuser, flock) is essential.
PKGS="slurm-wlm slurmdbd munge mariadb-server procps"

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=""
for p in $PKGS; do installed "$p" || missing="$missing $p"; done
if [ -z "$missing" ]; then
    say "packages present: $(dpkg-query -W -f='slurm ${Version}' slurmctld)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "missing packages:$missing; run as root (apt-get install)"
command -v apt-get >/dev/null || die "missing packages:$missing and no apt-get (Debian 12 expected)"
say "installing$missing (apt-get, ~15 s)"
export DEBIAN_FRONTEND=noninteractive

cleanup=()
finish() { local c; for c in "${cleanup[@]}"; do eval "$c"; done; }
trap finish EXIT
# Pitfall (notes): the packages' postinst would start slurmd/slurmctld/munge/mariadb through
# invoke-rc.d. Docker images ship a /usr/sbin/policy-rc.d that forbids this; on other machines we add
# one for the duration of the install only (start.sh starts every daemon itself, with its own config).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    cleanup+=("rm -f /usr/sbin/policy-rc.d")
fi
# Pitfall (notes): man-db's trigger took 20 s of a 38-s install on an image with many man pages;
# moving its auto-update flag aside for the install skips it.
if [ -e /var/lib/man-db/auto-update ]; then
    mv /var/lib/man-db/auto-update /var/lib/man-db/auto-update.hpcyuan-off
    cleanup+=("mv -f /var/lib/man-db/auto-update.hpcyuan-off /var/lib/man-db/auto-update")
fi

log=$(mktemp /tmp/hpcyuan-slurm-install.XXXXXX)
cleanup+=("rm -f $log")
# shellcheck disable=SC2086
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    tail -30 "$log" >&2
    die "apt-get failed (output above)"
fi
for p in $PKGS; do installed "$p" || die "$p still not installed after apt-get"; done
say "installed: $(dpkg-query -W -f='slurm ${Version}' slurmctld)"
