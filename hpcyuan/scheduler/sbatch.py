"""Render slurm/train.sbatch for one run, and submit it.

    script = render_script(cfg, site, config="tiny", sets=["slurm.partition=low"])
    job_ids = submit_run(script, cfg, site)     # one job, or the chain a no-requeue site needs

The template's placeholders (@NAME@) are replaced by values that are each quoted with shlex.quote,
in the #SBATCH lines too (sbatch reads them with shell-like quoting), so a job name, a --set value or
a path that holds `; rm -rf /`, `$(...)`, backquotes or quotes stays one inert word. Values with a
line break or a NUL are refused: a line break could start a new #SBATCH line or a shell command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from hpcyuan.config import REPO_ROOT, Config
from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.site import SiteProfile

TEMPLATE = REPO_ROOT / "slurm" / "train.sbatch"
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_NODES = re.compile(r"\d+(-\d+)?\Z")


def q(value) -> str:
    """One shell word for `value`; refuses what quoting cannot make safe on a line of its own."""
    text = str(value)
    if any(c in text for c in "\n\r\0"):
        raise HpcyuanError(f"{text!r}: a line break or NUL cannot go into a batch script")
    return shlex.quote(text)


def usable(cfg: Config, nodes: int) -> str | None:
    """Why `nodes` nodes cannot run this config (pp x dp and the batch), or None if they can."""
    pp, rpn, tr = cfg.parallel.pp, cfg.slurm.ranks_per_node, cfg.train
    ranks = nodes * rpn
    if ranks % pp:
        return f"{nodes} nodes x slurm.ranks_per_node {rpn} = {ranks} ranks: not a multiple of parallel.pp ({pp})"
    dp = ranks // pp
    if tr.global_batch_size % (tr.micro_batch_size * dp):
        return (f"{nodes} nodes give dp = {dp}: train.global_batch_size ({tr.global_batch_size}) is not a multiple "
                f"of train.micro_batch_size x dp ({tr.micro_batch_size} x {dp})")
    return None


def node_range(cfg: Config) -> tuple[int, int]:
    """(min, max) nodes to ask for: slurm.min_nodes (0 = slurm.nodes) to slurm.nodes. Both ends must
    be usable; a slot granted a count in between that is not (3 nodes where dp must divide 8) runs on
    the largest usable count below it (the job decides, it knows what it got: nodes_to_use)."""
    hi = cfg.slurm.nodes
    lo = cfg.slurm.min_nodes or hi
    for n in {lo, hi}:
        if why := usable(cfg, n):
            raise HpcyuanError(why)
    return lo, hi


def nodes_to_use(cfg: Config, granted: int) -> int:
    """The largest node count <= `granted` that the layout can use (0: none). slurm/train.sbatch does
    the same in bash."""
    return next((n for n in range(granted, 0, -1) if usable(cfg, n) is None), 0)


def render_script(cfg: Config, site: SiteProfile, config: str, sets: list[str] | tuple[str, ...] = (),
                  *, job_name: str | None = None, python: str | None = None,
                  workdir: str | None = None, template: Path = TEMPLATE) -> str:
    """The batch script of one run. `config` and `sets` are passed to `hpcyuan train` verbatim
    (parallel.dp is added per slot from the nodes Slurm granted); `cfg` is what they load to."""
    s = cfg.slurm
    lo, hi = node_range(cfg)
    run_dir = cfg.train.run_dir
    workdir = workdir or os.getcwd()
    output = f"{run_dir}/slurm-%A.out" if site.resume == "array" else f"{run_dir}/slurm-%j.out"  # %A: one log
    directives = []
    partition = s.partition or site.partition
    if partition:
        directives.append(f"--partition={q(partition)}")
    if site.account:
        directives.append(f"--account={q(site.account)}")
    if site.qos:
        directives.append(f"--qos={q(site.qos)}")
    if site.exclusive:
        directives.append("--exclusive")
    directives += [q(flag) for flag in site.sbatch_flags]
    setup = [f"module load {q(m)}" for m in site.modules]
    setup += [f"export {name}={q(value)}" for name, value in site.env.items()]
    train_args = ["train", "--config", config]
    for item in sets:
        train_args += ["--set", item]
    srun_flags = [f"--mpi={site.mpi}", *site.srun_flags]
    values = {
        "JOB_NAME": q(job_name or f"hpcyuan-{cfg.name}"),
        "NODES": q(f"{lo}-{hi}" if lo < hi else str(hi)),
        "RANKS_PER_NODE": q(s.ranks_per_node),
        "TIME": q(s.time),
        "TIME_MIN_LINE": f"#SBATCH --time-min={q(s.time_min)}" if s.time_min else "# (no --time-min)",
        "SIGNAL": q(s.signal),
        "SIGNAL_SECONDS": q(s.signal_seconds),
        "WORKDIR": q(workdir),
        "OUTPUT": q(output),
        "SITE_SBATCH_LINES": "\n".join(f"#SBATCH {d}" for d in directives) or "# (no site options)",
        "PYTHON": q(python or _default_python()),
        "PP": q(cfg.parallel.pp),
        "GLOBAL_BATCH": q(cfg.train.global_batch_size),
        "MICRO_BATCH": q(cfg.train.micro_batch_size),
        "MAX_REQUEUES": q(s.max_requeues),
        "RESUME": q(site.resume),
        "RESUME_LINES": _resume_lines(site.resume, s.max_requeues),
        "TRAIN_ARGS": " ".join(q(a) for a in train_args),
        "SRUN_FLAGS": " ".join(q(a) for a in srun_flags),
        "SITE_SETUP": "\n".join(setup) or "# (no modules or environment from the site profile)",
    }
    text = template.read_text()
    missing = set(_PLACEHOLDER.findall(text)) - values.keys()
    if missing:
        raise HpcyuanError(f"{template}: unknown placeholders {sorted(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _resume_lines(resume: str, max_requeues: int) -> str:
    """#SBATCH lines of the way the run continues in a new slot (SiteProfile.resume)."""
    if resume == "requeue":
        return "#SBATCH --requeue"
    chain = (f"#SBATCH --array=0-{max_requeues}%1" if resume == "array"
             else "#SBATCH --dependency=singleton  # one job of this name runs at a time: the chain")
    return f"#SBATCH --no-requeue\n{chain}"


def submit_run(script: str, cfg: Config, site: SiteProfile, *sbatch_args: str) -> list[str]:
    """Submit a run: the job (resume = requeue or array: one sbatch), or slurm.max_requeues + 1 jobs of
    one name (singleton), each given its index in the chain. Returns the job ids, first to run first."""
    if site.resume != "singleton":
        return [submit_script(script, *sbatch_args)]
    links = cfg.slurm.max_requeues + 1
    ids = []
    for index in range(links):
        try:
            ids.append(submit_script(script, *sbatch_args, script_args=(str(index),)))
        except HpcyuanError as err:
            if not ids:
                raise
            raise HpcyuanError(f"{err}\n(jobs {', '.join(ids)} of the chain were submitted: "
                               f"{len(ids)} of {links} slots; scancel them or let them run)") from None
    return ids


def _default_python() -> str:
    import sys

    return sys.executable


def submit_script(script: str, *sbatch_args: str, script_args: tuple[str, ...] = ()) -> str:
    """Run sbatch on `script` (with `script_args` after it); returns the job id."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="hpcyuan-", delete=False) as f:
        f.write(script)
    try:
        try:
            r = subprocess.run(["sbatch", "--parsable", *sbatch_args, f.name, *script_args], capture_output=True,
                               text=True, timeout=120)
        except FileNotFoundError:
            raise HpcyuanError("sbatch not found: is this a Slurm login node? (try --dry-run)") from None
        if r.returncode:
            raise HpcyuanError(f"sbatch failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
        return r.stdout.strip().split(";")[0]
    finally:
        Path(f.name).unlink(missing_ok=True)
