"""`hpcyuan harvest`: keep one training run progressing on whatever backfill slots the cluster offers.

    harvester = Harvester(cfg, config, sets, site, options, say=print)
    harvester.run()            # until the run has trained train.steps; Ctrl-C leaves it consistent

Each pass (every `poll_s`, rate-limited: Slurm asks not to call its clients in tight loops):
  1. squeue for the run's job name: is a slot queued or running? (never a second copy: the name is
     checked here and the job carries --dependency=singleton, which Slurm enforces across partitions)
  2. sacct for every job the ledger knows -> ledger.reconcile (sacct is the truth), with the work
     each slot did from the run's attempts.jsonl + metrics.jsonl
  3. nothing queued: probe every partition of the site profile (sinfo, then `sbatch --test-only` for
     the largest usable node count that is idle there), policy.choose, submit the batch script of
     sbatch.py for that partition and shape (-N min-max, --time, --time-min) with max_requeues = 0:
     the harvester, not the script, decides where the next slot goes.
All state lives in RUN_DIR/harvest.sqlite; a restarted harvester picks up the queued job, if any.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpcyuan.attempts import read_attempts
from hpcyuan.config import Config, load_config
from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.ledger import Ledger, attempt_work
from hpcyuan.parallel.partition import plan
from hpcyuan.scheduler.policy import Decision, Offer, Shape, choose
from hpcyuan.scheduler.sbatch import render_script, submit_script, usable
from hpcyuan.scheduler.site import SiteProfile
from hpcyuan.scheduler.slurm_output import (SACCT_FIELDS, SINFO_FORMAT, SQUEUE_FORMAT, PartitionState, QueuedJob,
                                            SacctRecord, TestOnly, parse_sacct, parse_sinfo, parse_squeue,
                                            parse_test_only)

_STOP_REASON = re.compile(r"\] SIG\w+: (preempted|timed-out|signalled)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Probe:
    """The Slurm client calls, each at most once per `min_interval_s` (a repeated call within the
    interval returns the previous answer)."""

    def __init__(self, min_interval_s: float = 5.0):
        self.min_interval_s = min_interval_s
        self._cache: dict[tuple, tuple[float, subprocess.CompletedProcess]] = {}

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        now = time.monotonic()
        hit = self._cache.get(cmd)
        if hit and now - hit[0] < self.min_interval_s:
            return hit[1]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise HpcyuanError(f"{cmd[0]} not found: is this a Slurm login node?") from None
        self._cache[cmd] = (now, result)
        return result

    def _ok(self, *cmd: str) -> str:
        r = self._run(*cmd)
        if r.returncode:
            raise HpcyuanError(f"{' '.join(cmd[:2])} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def sinfo(self) -> dict[str, PartitionState]:
        return parse_sinfo(self._ok("sinfo", "--noheader", "-o", SINFO_FORMAT))

    def squeue(self, name: str) -> list[QueuedJob]:
        return parse_squeue(self._ok("squeue", "--noheader", "--name", name, "-o", SQUEUE_FORMAT))

    def sacct(self, job_ids: list[str]) -> list[SacctRecord]:
        if not job_ids:
            return []
        return parse_sacct(self._ok("sacct", "--noheader", "--parsable2", "-X", "-D", "-j", ",".join(job_ids),
                                    "-o", ",".join(SACCT_FIELDS)))

    def test_only(self, partition: str, nodes: int, walltime: str, time_min: str, exclusive: bool) -> TestOnly:
        cmd = ["sbatch", "--test-only", "-p", partition, "-N", str(nodes), "-t", walltime]
        cmd += [f"--time-min={time_min}"] if time_min else []
        cmd += ["--exclusive"] if exclusive else []
        r = self._run(*cmd, "--wrap", "true")
        return parse_test_only(partition, r.stderr, r.returncode)


def probe_offers(site: SiteProfile, probe: Probe, counts: list[int]) -> dict[str, Offer]:
    """For each partition of the profile: the largest usable node count idle there now, and when
    `sbatch --test-only` says that shape would start; or why the partition cannot take a slot."""
    states = probe.sinfo()
    offers = {}
    for name, prof in site.partitions.items():
        state = states.get(name)
        if state is None:
            offers[name] = Offer(name, error="not on this cluster (sinfo does not list it)")
        elif not state.up:
            offers[name] = Offer(name, error=f"partition is {state.available} (sinfo)")
        else:
            fit = [n for n in counts if n <= min(len(state.idle), prof.max_nodes)]
            if not fit:
                offers[name] = Offer(name, error=f"{len(state.idle)} idle node(s): fewer than the smallest usable "
                                                 f"count {counts[0]}")
                continue
            answer = probe.test_only(name, fit[-1], prof.time, prof.time_min, site.exclusive)
            offers[name] = (Offer(name, fit[-1], answer.start) if answer.accepted
                            else Offer(name, error=f"sbatch --test-only refused: {answer.error}"))
    return offers


def stop_reasons(run_dir: Path, job_ids: list[str]) -> dict[str, str]:
    """job id -> the stop reason its batch script logged ("preempted", "timed-out", ...)."""
    out = {}
    for job_id in job_ids:
        path = run_dir / f"slurm-{job_id}.out"
        if path.exists() and (m := _STOP_REASON.search(path.read_text(errors="replace"))):
            out[job_id] = m.group(1)
    return out


def slot_sets(cfg: Config, config: str, sets: list[str], shape: Shape) -> list[str]:
    """The run's --set overrides for one slot: the shape (partition, nodes, walltime; no requeue by the
    script: the harvester places the next slot) and, with pp > 1 and no pinned split, the stage
    planner's layers_per_stage for the dp of the largest grant (ZeRO memory depends on dp)."""
    out = [*sets, f'slurm.partition="{shape.partition}"', f"slurm.nodes={shape.nodes_max}",
           f"slurm.min_nodes={shape.nodes_min}", f'slurm.time="{shape.time}"', f'slurm.time_min="{shape.time_min}"',
           "slurm.max_requeues=0"]
    if cfg.parallel.pp > 1 and not cfg.parallel.layers_per_stage:
        dp = shape.nodes_max * cfg.slurm.ranks_per_node // cfg.parallel.pp
        split = plan(load_config(config, [*out, f"parallel.dp={dp}"])).layers_per_stage
        out.append(f"parallel.layers_per_stage={list(split)}")
    return out


@dataclass(frozen=True)
class HarvestOptions:
    objective: str = "cheapest"
    budget: float = 0.0
    min_nodes: int = 0
    """0: a slot asks for exactly the node count idle now; N: -N N-that (Slurm 22.05 may then start it on N)."""
    poll_s: float = 10.0
    max_failures: int = 3
    """Give up after this many slots in a row failed (a crash that a new slot will not fix)."""
    job_name: str = ""

    def __post_init__(self):
        if self.poll_s < 1:
            raise HpcyuanError(f"--poll {self.poll_s}: at least 1 s (Slurm's clients are not for tight loops)")
        if self.min_nodes < 0 or self.max_failures < 1:
            raise HpcyuanError("--min-nodes must be >= 0 and --max-failures >= 1")


class Harvester:
    def __init__(self, cfg: Config, config: str, sets: list[str], site: SiteProfile, options: HarvestOptions,
                 say=print):
        if not site.partitions:
            raise HpcyuanError(f"site profile {site.name} ({site.source}) has no [partitions.<name>] tables: "
                               f"nothing to harvest (docs/harvest.md)")
        self.cfg, self.config, self.sets, self.site, self.options, self.say = cfg, config, sets, site, options, say
        self.run_dir = Path(cfg.train.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir / "harvest.sqlite")
        self.job_name = options.job_name or f"hpcyuan-harvest-{cfg.name}"
        self.probe = Probe(min_interval_s=min(5.0, options.poll_s))
        self.counts = [n for n in range(1, max(p.max_nodes for p in site.partitions.values()) + 1)
                       if usable(cfg, n) is None]
        if not self.counts:
            raise HpcyuanError("no node count up to the partitions' max_nodes fits parallel.pp and the batch")
        self._last_key, self._last_time = "", 0.0

    def run(self) -> int:
        """Poll until the run is done; returns 0 (done) or raises HpcyuanError. Ctrl-C (SIGINT) or
        SIGTERM returns 130 and leaves the queued or running slot alone: the same command picks it up."""
        self.ledger.set_meta("job_name", self.job_name)
        self.ledger.event("start", f"harvest {self.cfg.name} on {self.site.name}: objective {self.options.objective}")
        # a harvester started in the background (nohup, `&` in a script) inherits SIGINT ignored, and
        # is stopped with SIGTERM: both end it the same way
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.step():
                time.sleep(self.options.poll_s)
        except KeyboardInterrupt:
            active = [j.job_id for j in self.probe.squeue(self.job_name) if j.active]
            self.ledger.event("interrupted", f"Ctrl-C or SIGTERM; left running: {active or 'nothing'}")
            self.say(f"\nharvest interrupted: {'job ' + ', '.join(active) + ' keeps' if active else 'nothing is'} "
                     f"running; the ledger is saved; run the same command to go on")
            return 130
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.ledger.close()
        return 0

    def step(self) -> bool:
        """One pass; True when the run has trained all its steps."""
        active = [j for j in self.probe.squeue(self.job_name) if j.active]
        known = set(self.ledger.job_ids())
        for job in active:  # submitted, then interrupted before the ledger heard of it: adopt it
            if job.job_id not in known:
                prof = self.site.partitions.get(job.partition)
                self.ledger.submitted(job.job_id, job.partition, prof.price if prof else 0.0, time.time())
                self.ledger.event("adopt", f"job {job.job_id} in {job.partition}: queued under the run's name")
        self.reconcile()
        if self.finished():
            if active or any(s.ended in ("running", "pending") for s in self.ledger.slots()):
                self.progress(active)  # trained; the last slot is on its way out (and sacct lags it)
                return False
            self.progress(active, final=True)
            self.ledger.event("done", f"run finished at step {self.cfg.train.steps}")
            return True
        failures = 0
        for slot in reversed(self.ledger.slots()):
            if slot.ended != "failed":
                break
            failures += 1
        if failures >= self.options.max_failures:
            raise HpcyuanError(f"{failures} slots in a row failed; see {self.run_dir}/slurm-<jobid>.out "
                               f"(hpcyuan status {self.run_dir})")
        if not active:
            self.submit_next()
        self.progress(active)
        return False

    def reconcile(self) -> None:
        jobs = self.ledger.job_ids()
        self.ledger.reconcile(self.probe.sacct(jobs), attempt_work(self.run_dir), stop_reasons(self.run_dir, jobs))

    def finished(self) -> bool:
        path = self.run_dir / "attempts.jsonl"
        attempts = read_attempts(path) if path.exists() else []
        return bool(attempts) and attempts[-1].outcome == "done" and attempts[-1].to_step == self.cfg.train.steps

    def decide(self) -> Decision:
        offers = probe_offers(self.site, self.probe, self.counts)
        return choose(self.site.partitions, offers, self.counts, self.options.objective, time.time(),
                      self.options.budget, self.options.min_nodes)

    def submit_next(self) -> None:
        decision = self.decide()
        self.ledger.event("decision", decision.explain())
        self.say(f"[harvest] {decision.explain()}")
        shape = decision.shape
        if shape is None:
            return
        sets = slot_sets(self.cfg, self.config, self.sets, shape)
        cfg = load_config(self.config, sets)
        script = render_script(cfg, self.site, self.config, sets, job_name=self.job_name)
        job_id = submit_script(script, "--dependency=singleton")
        self.ledger.submitted(job_id, shape.partition, shape.price, time.time())
        self.ledger.event("submit", f"job {job_id}: {shape.describe()}")
        self.say(f"[harvest] submitted job {job_id} to {shape.describe()}")

    def progress(self, active: list[QueuedJob], final: bool = False) -> None:
        """One line when something changed: step, the slot now, slots so far, goodput, cost."""
        slots = [s for s in self.ledger.slots() if s.start is not None]
        alloc = sum(s.node_hours for s in slots)
        goodput = sum(s.kept_node_s for s in slots) / 3600 / alloc if alloc else 0.0
        steps = max((w.last_step for w in attempt_work(self.run_dir)), default=0)
        now = ", ".join(f"job {j.job_id} {j.state.lower()} in {j.partition} ({j.nodes} nodes)" for j in active)
        key = (f"[harvest] step {steps}/{self.cfg.train.steps} | {now or ('done' if final else 'no slot')} | "
               f"{len(slots)} slots, {sum(s.ended == 'preempted' for s in slots)} preempted")
        # a line when the state changes, else every 30 s (cost and goodput move at every poll)
        if key != self._last_key or time.monotonic() - self._last_time > 30 or final:
            self.say(f"{time.strftime('%H:%M:%S')} {key} | goodput {100 * goodput:.1f}% | "
                     f"cost {sum(s.cost for s in slots):.4g}")
            self._last_key, self._last_time = key, time.monotonic()
