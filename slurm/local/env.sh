# shellcheck shell=sh
# Source this to use the local test cluster from a shell:  . slurm/local/env.sh; sinfo; sbatch ...
# (start.sh also links /etc/slurm/slurm.conf to the config when that path is free, so plain `sinfo`
# works too; this file is what to use when it could not.)
export HPCYUAN_SLURM_DIR="${HPCYUAN_SLURM_DIR:-/var/tmp/hpcyuan-slurm}"
export SLURM_CONF="$HPCYUAN_SLURM_DIR/etc/slurm.conf"
