"""`hpcyuan submit --executor submitit`: the job of slurm/train.sbatch, submitted and requeued by submitit.

    job = submit(cfg, site, config="tiny", sets=["slurm.partition=low"])   # a submitit.Job
    job.result()        # once the run has finished, over however many slots it took

How it runs (docs/slurm.md, "The submitit executor"):

* One submitit task, in the batch step itself (submitit's use_srun=False). The pickled callable,
  `TrainJob`, holds the config path, the --set values and the site profile's path, nothing else.
  In each slot it loads them, fits parallel.dp to the nodes Slurm granted and starts the ranks with
  `srun --mpi=<site mpi>` (pmi2 for MPICH), as the batch script does. submitit's own task-per-rank
  mode would run every rank inside submitit's process: a killed rank then takes all of them down
  and nobody is left to requeue, and a slot cannot leave granted nodes idle that pp x dp cannot use.
* The stop signal goes to the steps (`--signal=USR2@N`, no `B:`): the ranks' StopRequest
  (runtime/signals.py) saves a checkpoint and they exit 75. A signal sent to the batch step itself is
  forwarded to srun, never handled by submitit first.
* Only then does the callable hand over to submitit: it calls the handler submitit installed for
  its preemption signal, which asks `TrainJob.checkpoint()` for the next submission (the same
  callable: the resume point is the run's own HDF5 checkpoints, `latest`), pickles it, runs
  `scontrol requeue` and exits. A crashed or killed rank is retried the same way; exit 2 (config
  error) fails the job. Requeues of both kinds stop at slurm.max_requeues (SLURM_RESTART_COUNT).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcyuan.config import Config, load_config
from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.env import parse_squeue_end_time
from hpcyuan.runtime.signals import EXIT_REQUEUE
from hpcyuan.scheduler.sbatch import node_range, nodes_to_use, q
from hpcyuan.scheduler.site import SiteProfile, load_site, site_path

EXIT_CONFIG = 2
RANK_SIGNALS = ("USR2", "TERM")
"""The ranks stop on these (runtime/signals.py); submitit sends slurm.signal to them directly."""


# ---------------------------------------------------------------------------------------------
# what to ask for (pure: tests/unit/test_executor.py)


_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\Z")


def slurm_minutes(text: str) -> int:
    """A Slurm time ("90", "45:30" = min:sec, "1:30:00", "2-12", "2-00:00") -> whole minutes, rounded
    up (submitit counts its time-outs in minutes)."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        raise HpcyuanError(f"slurm.time = {text!r}: not a Slurm time (minutes, h:mm:ss, d-hh:mm)")
    days, *rest = match.groups()
    nums = [int(n) for n in rest if n is not None]
    if days is not None:  # days-hours[:minutes[:seconds]]
        h, m, sec = (nums + [0, 0])[:3]
    elif len(nums) == 3:
        h, m, sec = nums
    else:  # minutes[:seconds]
        h, (m, sec) = 0, (nums + [0])[:2]
    return math.ceil((int(days or 0) * 24 + h) * 60 + m + sec / 60)


def sbatch_options(flags: tuple[str, ...]) -> dict:
    """A site profile's sbatch_flags ("--gres=gpu:4", "--exclusive") as submitit additional_parameters."""
    options = {}
    for flag in flags:
        if not flag.startswith("--") or len(flag) < 3:
            raise HpcyuanError(f"site sbatch_flags: {flag!r}: the submitit executor takes long options only "
                               "(--name=value or --name)")
        name, eq, value = flag[2:].partition("=")
        options[name] = value if eq else True
    return options


def executor_parameters(cfg: Config, site: SiteProfile, job_name: str | None = None,
                        workdir: str | None = None) -> dict:
    """The SlurmExecutor.update_parameters of a run: what the job asks Slurm for, the same requests
    as the batch script (node range, ranks per node, time, signal, requeue, site options)."""
    s = cfg.slurm
    if s.signal not in RANK_SIGNALS:
        raise HpcyuanError(f"slurm.signal = {s.signal!r}: the submitit executor signals the ranks directly, "
                           f"which stop on {' or '.join(RANK_SIGNALS)}")
    lo, hi = node_range(cfg)
    extra = {
        "nodes": f"{lo}-{hi}" if lo < hi else str(hi),  # here, not submitit's `nodes`: that would
        "ntasks-per-node": str(s.ranks_per_node),       # make it wait for one result per rank
        "time": s.time,                                 # exact; submitit's `time` is whole minutes
        "signal": f"{s.signal}@{s.signal_seconds}",     # to the ranks (no B:)
        "requeue": True,
        "chdir": workdir or os.getcwd(),
    }
    if s.time_min:
        extra["time-min"] = s.time_min
    extra.update(sbatch_options(site.sbatch_flags))
    setup = [f"module load {q(m)}" for m in site.modules]
    setup += [f"export {name}={q(value)}" for name, value in site.env.items()]
    params = {
        "job_name": job_name or f"hpcyuan-{cfg.name}",
        "partition": s.partition or site.partition or None,
        "account": site.account or None,
        "qos": site.qos or None,
        "exclusive": True if site.exclusive else None,
        "time": slurm_minutes(s.time),
        "signal_delay_s": s.signal_seconds,
        "use_srun": False,
        "stderr_to_stdout": True,
        "setup": setup or None,
        "additional_parameters": extra,
    }
    for value in [*params.values(), *extra.values()]:
        if isinstance(value, str):
            q(value)  # refuses line breaks: submitit quotes #SBATCH values with shlex.quote, which keeps them
    return {k: v for k, v in params.items() if v is not None}


def stop_reason(job: dict, now: float, signal_seconds: int) -> str:
    """Why the ranks stopped with exit 75, from `scontrol show job` fields: preempted (Slurm set
    PreemptTime during this slot), timed-out (the limit is at most signal_seconds + 60 s away: the
    signal comes up to a minute early, or the run's own deadline stopped it), else signalled by hand."""
    preempted = parse_squeue_end_time(job.get("PreemptTime", ""))
    started = parse_squeue_end_time(job.get("StartTime", "")) or 0.0
    if preempted is not None and preempted >= started:
        return f"preempted at {job['PreemptTime']}"
    end = parse_squeue_end_time(job.get("EndTime", ""))
    if end is None:
        return "signalled (time left unknown)"
    left = end - now
    if left <= signal_seconds + 60:
        return f"timed-out (the time limit is {left:.0f}s away)"
    return f"signalled ({left:.0f}s of walltime left)"


def srun_command(cfg: Config, site: SiteProfile, config: str, sets: tuple[str, ...], nodes: int) -> list[str]:
    """The ranks of one slot on `nodes` nodes: `srun ... python -m hpcyuan train ... parallel.dp=<fit>`."""
    rpn = cfg.slurm.ranks_per_node
    ranks = nodes * rpn
    train = ["train", "--config", config, *(a for item in sets for a in ("--set", item)),
             "--set", f"parallel.dp={ranks // cfg.parallel.pp}"]
    return ["srun", f"--mpi={site.mpi}", *site.srun_flags, f"--nodes={nodes}", f"--ntasks={ranks}",
            f"--ntasks-per-node={rpn}", sys.executable, "-m", "hpcyuan", *train]


def mpich_world_id(pmi_job_id: str) -> str:
    """MPICH's id of a PMI job ("<job>.<step>" under srun): 32-bit FNV-1a in hex. It names the
    shared-memory segments of the step's ranks: /dev/shm/mpich_shm_<id>_<node>."""
    h = 2166136261
    for byte in pmi_job_id.encode():
        h = (h ^ byte) * 16777619 & 0xFFFFFFFF
    return f"{h:x}"


def stale_segments_command(job_id: str, nodes: int) -> list[str]:
    """The step (.0) run before the ranks (.1) that removes, on every node, the MPICH segments the
    ranks will look for. A requeued job numbers its steps from 0 again and MPICH opens a segment that
    exists, so one left by a rank killed in an earlier slot would be reused, stale (MPI_Init fails:
    "message truncated"). slurm/train.sbatch runs the same step."""
    world = mpich_world_id(f"{job_id}.1")
    paths = [f"/dev/shm/mpich_{kind}_{world}_{n}" for n in range(nodes) for kind in ("shm", "vci")]
    return ["srun", "--mpi=none", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "rm", "-f", *paths]


# ---------------------------------------------------------------------------------------------
# the callable submitit pickles


class TrainJob:
    """One run through submitit: each call is one slot. Pickled: config, sets, site (strings) only."""

    def __init__(self, config: str, sets: tuple[str, ...], site: str):
        self.config, self.sets, self.site = config, tuple(sets), site
        self._srun: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"config": self.config, "sets": self.sets, "site": self.site}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"TrainJob(config={self.config!r}, sets={list(self.sets)!r}, site={self.site!r})"

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue hook: the next slot runs this same callable, which resumes from the run's
        newest good checkpoint (saved by the ranks before this is called)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.sets, self.site))

    def __call__(self) -> dict:
        env = os.environ
        restarts = int(env.get("SLURM_RESTART_COUNT", "0"))
        cfg = load_config(self.config, list(self.sets))
        site = load_site(self.site)
        granted = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1")
        nodes = nodes_to_use(cfg, granted)
        if not nodes:
            self._fail(restarts, f"{granted} node(s) x {cfg.slurm.ranks_per_node} ranks cannot hold parallel.pp = "
                                 f"{cfg.parallel.pp} with this batch")
        if nodes < granted:
            self._log(restarts, f"granted {granted} nodes; using {nodes} (the largest count the layout fits)")
        ranks = nodes * cfg.slurm.ranks_per_node
        self._log(restarts, f"start on {env.get('SLURM_JOB_NODELIST', '?')}: {nodes} node(s) x "
                            f"{cfg.slurm.ranks_per_node} = {ranks} ranks = pp {cfg.parallel.pp} x dp "
                            f"{ranks // cfg.parallel.pp}")
        cleared = subprocess.run(stale_segments_command(env.get("SLURM_JOB_ID", "0"), nodes)).returncode
        if cleared:
            self._log(restarts, f"could not remove stale MPICH segments (srun exit {cleared}); starting anyway")
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._forward)  # the ranks save first; submitit requeues after
        self._srun = subprocess.Popen(srun_command(cfg, site, self.config, self.sets, nodes))
        rc = self._srun.wait()
        self._srun = None
        if rc == 0:
            self._log(restarts, "training finished (exit 0)")
            return {"run_dir": cfg.train.run_dir, "restarts": restarts, "nodes": nodes}
        if rc == EXIT_CONFIG:
            self._fail(restarts, "configuration or input error (exit 2): not retried")
        if rc == EXIT_REQUEUE:
            why = f"stopped after a checkpoint (exit 75, {stop_reason(_scontrol_job(), time.time(), cfg.slurm.signal_seconds)})"
        else:
            why = f"failure (exit {rc}: crash, collective timeout or a rank killed); retrying from the last checkpoint"
        if restarts >= cfg.slurm.max_requeues:
            self._fail(restarts, f"{why}; not requeued: {restarts} requeues already (slurm.max_requeues = "
                                 f"{cfg.slurm.max_requeues}), giving up")
        if not callable(submitit_handler):
            self._fail(restarts, f"{why}; cannot requeue: not running as a submitit job")
        self._log(restarts, f"{why}; requeueing (requeue {restarts + 1} of at most {cfg.slurm.max_requeues})")
        # submitit's own path: checkpoint() -> pickle the next submission -> scontrol requeue -> exit
        submitit_handler(signal.SIGUSR2, None)
        raise HpcyuanError("submitit's preemption handler returned without requeueing")

    def _forward(self, signum, frame) -> None:
        if self._srun is not None:
            os.kill(self._srun.pid, signal.SIGUSR2)  # srun passes USR2 on to every rank

    def _log(self, restarts: int, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[hpcyuan-submitit {stamp} job {os.environ.get('SLURM_JOB_ID', '?')} restart {restarts}] {text}",
              flush=True)

    def _fail(self, restarts: int, text: str) -> None:
        self._log(restarts, text)
        raise HpcyuanError(text)  # submitit records it as the job's error: FAILED, not requeued


def _scontrol_job() -> dict:
    """This job's `scontrol show job` fields ({} if scontrol fails: the reason is then 'time left unknown')."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", os.environ.get("SLURM_JOB_ID", "")],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


# ---------------------------------------------------------------------------------------------
# submitting


def folder(cfg: Config) -> Path:
    """submitit's folder of a run: its pickles and the job log (<jobid>_0_log.out, all slots)."""
    return Path(cfg.train.run_dir).resolve() / "submitit"


def _job(config: str, sets, site: SiteProfile) -> TrainJob:
    return TrainJob(config, tuple(sets), str(site_path(site.source) if site.source else site.name))


def render_script(cfg: Config, site: SiteProfile, config: str, sets=(), *, job_name: str | None = None) -> str:
    """The batch script submitit would submit (`hpcyuan submit --executor submitit --dry-run`)."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes; needs no srun here

    where = folder(cfg)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(where))}"
    script = _make_sbatch_string(command=command, folder=where, **executor_parameters(cfg, site, job_name))
    return script + f"# the pickled callable: {_job(config, sets, site)!r}\n"


def submit(cfg: Config, site: SiteProfile, config: str, sets=(), *, job_name: str | None = None):
    """Submit the run through submitit; returns the submitit.Job."""
    import submitit

    params = executor_parameters(cfg, site, job_name)
    try:
        executor = submitit.SlurmExecutor(folder=folder(cfg), max_num_timeout=cfg.slurm.max_requeues)
    except RuntimeError as e:  # no srun on PATH
        raise HpcyuanError(f"submitit: {e} (try --dry-run)") from None
    executor.update_parameters(**params)
    try:
        return executor.submit(_job(config, sets, site))
    except (submitit.core.utils.FailedJobError, OSError) as e:  # sbatch refused it, or is missing
        raise HpcyuanError(f"submitit could not submit the job: {str(e).strip()}") from None
