"""The slurm tier runs against a real local Slurm cluster (slurm/local): this session fixture installs
and starts it once (~15 s on a fresh machine, ~0.4 s when it is already up) and leaves it running.

Nothing is skipped: when the cluster cannot be installed or started (not root, no apt, a daemon that
does not come up) every test here errors with the script's output.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "slurm" / "local"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class Slurm:
    """Thin helpers over the real client commands (sbatch, squeue, sacct, scontrol)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.conf = f"{state_dir}/etc/slurm.conf"

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stdout}{r.stderr}")
        return r.stdout

    def sbatch(self, script: Path, *args: str) -> str:
        """Submit `script` with sbatch options `args`; returns the job id."""
        return self.run("sbatch", "--parsable", *args, str(script)).strip().split(";")[0]

    def job(self, jobid: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, Reason, ...; kept MinJobAge=600 s after the end)."""
        out = self.run("scontrol", "show", "job", "-o", jobid)
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def sacct(self, jobid: str) -> list[dict]:
        """The allocation records of a job, oldest first (-D: one per requeue), from slurmdbd."""
        fields = ["JobIDRaw", "State", "ExitCode", "Partition", "NNodes", "NodeList", "Start", "End"]
        out = self.run("sacct", "-n", "-P", "-X", "-D", "-j", jobid, "-o", ",".join(fields))
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]

    def wait_final(self, jobid: str, timeout: float = 60) -> list[dict]:
        """Poll sacct until the job's latest record is final and complete.

        The record lags the job by ~1 s, and for a job of a second or so slurmdbd may hold the end
        before the start: COMPLETED with an empty Partition for a moment (seen here), so wait for both.
        """
        deadline = time.monotonic() + timeout
        while True:
            recs = self.sacct(jobid)
            if recs and recs[-1]["State"].split()[0] in FINAL and all(r["Partition"] for r in recs):
                return recs
            if time.monotonic() > deadline:
                raise AssertionError(f"job {jobid} not finished after {timeout} s: {recs}\n{self.queue()}")
            time.sleep(0.3)

    def queue(self) -> str:
        return self.run("squeue", "-o", "%.8i %.9P %.12j %.2t %.10M %.5D %R", check=False)

    def wait_idle(self, nodes: int, timeout: float = 60) -> None:
        """Wait until `nodes` nodes are idle (a test needing them must not race leftovers of another)."""
        deadline = time.monotonic() + timeout
        while True:
            idle = set(self.run("sinfo", "-h", "-N", "-t", "idle", "-o", "%N").split())
            if len(idle) >= nodes:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {sorted(idle)} idle after {timeout} s, need {nodes}:\n{self.queue()}")
            time.sleep(0.3)

    def cancel(self, *jobids: str) -> None:
        if jobids:
            self.run("scancel", *jobids, check=False)


@pytest.fixture(scope="session", autouse=True)
def slurm():
    """Install and start the cluster once per session; point the client commands at it."""
    for script in ("install.sh", "start.sh"):
        try:
            r = subprocess.run(["bash", str(LOCAL / script)], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"slurm/local/{script} did not finish in 600 s:\n{e.stdout or ''}{e.stderr or ''}", pytrace=False)
        if r.returncode:
            pytest.fail(f"slurm/local/{script} failed (rc {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)
    state_dir = os.environ.get("HPCYUAN_SLURM_DIR", "/var/tmp/hpcyuan-slurm")
    with pytest.MonkeyPatch.context() as mp:
        # the jobs inherit it too (sbatch exports the submitter's environment), e.g. for `scontrol requeue`
        mp.setenv("SLURM_CONF", f"{state_dir}/etc/slurm.conf")
        yield Slurm(state_dir)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, shakespeare_512):
    """The uninterrupted run the interrupted ones are compared with (test_workflows.py, test_submitit.py):
    4 local ranks, pp 1 x dp 4, the workflows' settings."""
    from test_workflows import STEPS, training_runs  # tests/slurm is on the path (no package)

    run_dir = tmp_path_factory.mktemp("reference")
    training_runs.train(run_dir, STEPS, 1, 4, "--set", "checkpoint.interval=2", "--set", "train.timeline_step=0")
    return run_dir


@pytest.fixture
def cleanup(slurm):
    """Job ids appended here are cancelled after the test, whatever its outcome."""
    jobs: list[str] = []
    yield jobs
    slurm.cancel(*jobs)
