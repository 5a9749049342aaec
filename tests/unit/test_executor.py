"""The submitit executor's pure parts (hpcyuan/scheduler/executor.py): the executor parameters built
from config + site, Slurm times, the stop reason, the ranks' srun line, what gets pickled, and the
exit-code mapping of TrainJob run by Python with stub srun/scontrol (the real thing: tests/slurm/test_submitit.py)."""

from __future__ import annotations

import pickle
import signal

import pytest
import submitit
from helpers import one_line_error
from test_sbatch import GOLDEN_SETS, SITE

from hpcyuan.cli import main
from hpcyuan.config import load_config
from hpcyuan.scheduler import load_site
from hpcyuan.scheduler.executor import (TrainJob, executor_parameters, sbatch_options, slurm_minutes, srun_command,
                                        stop_reason)


@pytest.mark.parametrize("text, minutes", [("90", 90), ("45:30", 46), ("1:30:00", 90), ("02:00:00", 120),
                                           ("1-12", 2160), ("2-00:00", 2880), ("1-00:00:01", 1441)])
def test_slurm_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("bad", ["", "soon", "1:2:3:4", "-5"])
def test_slurm_minutes_refuses_what_is_not_a_time(bad):
    one_line_error(lambda: slurm_minutes(bad), "not a Slurm time")


def test_executor_parameters_of_the_golden_run():
    cfg = load_config("tiny", GOLDEN_SETS)
    params = executor_parameters(cfg, SITE, "golden-run", workdir="/srv/hpcyuan")
    assert params == {
        "job_name": "golden-run", "partition": "low", "account": "proj123", "qos": "normal", "exclusive": True,
        "time": 120, "signal_delay_s": 90, "use_srun": False, "stderr_to_stdout": True,
        "setup": ["module load gcc/12", "module load python/3.11", "export OMP_NUM_THREADS=8"],
        "additional_parameters": {"nodes": "2-4", "ntasks-per-node": "1", "time": "02:00:00",
                                  "signal": "USR2@90", "requeue": True, "chdir": "/srv/hpcyuan",
                                  "time-min": "00:30:00", "gres": "gpu:4"},
    }


def test_dry_run_prints_the_script_submitit_would_submit(capsys):
    assert main(["submit", "--config", "tiny", "--site", "local", "--executor", "submitit", "--dry-run",
                 "--set", "slurm.nodes=4", "--set", "slurm.partition=low"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --partition=low",
                 "#SBATCH --exclusive", "export OMP_NUM_THREADS=1"):
        assert line + "\n" in out, (line, out)
    assert "\nsrun" not in out and "-m submitit.core._submit" in out  # one task, in the batch step
    assert "# the pickled callable: TrainJob(config='tiny'" in out


def test_what_submitit_cannot_do_is_refused_in_one_line():
    cfg = load_config("tiny", ["slurm.signal=USR1"])
    one_line_error(lambda: executor_parameters(cfg, SITE), "slurm.signal = 'USR1'", "USR2 or TERM")
    one_line_error(lambda: executor_parameters(load_config("tiny"), SITE, "a\nb"), "line break")
    one_line_error(lambda: sbatch_options(("-C", "big")), "long options only")
    assert sbatch_options(("--gres=gpu:4", "--exclusive")) == {"gres": "gpu:4", "exclusive": True}
    assert main(["submit", "--config", "tiny", "--executor", "submitit", "--sbatch-arg=--hold"]) == 2


NOW = 1_700_000_000.0
STAMP = "%Y-%m-%dT%H:%M:%S"


def stamp(offset: float) -> str:
    import time

    return time.strftime(STAMP, time.localtime(NOW + offset))


@pytest.mark.parametrize("fields, reason", [
    ({"StartTime": stamp(-100), "PreemptTime": stamp(-2), "EndTime": stamp(25)}, "preempted at"),
    ({"StartTime": stamp(-100), "PreemptTime": "None", "EndTime": stamp(70)}, "timed-out (the time limit is 70s away)"),
    # preempted in an earlier slot, timed out in this one
    ({"StartTime": stamp(-100), "PreemptTime": stamp(-900), "EndTime": stamp(30)}, "timed-out"),
    ({"StartTime": stamp(-100), "PreemptTime": "None", "EndTime": stamp(3000)}, "signalled (3000s of walltime left)"),
    ({}, "signalled (time left unknown)"),
])
def test_stop_reason(fields, reason):
    assert stop_reason(fields, NOW, signal_seconds=20).startswith(reason)


def test_srun_command_fits_dp_to_the_nodes():
    cfg = load_config("tiny", ["slurm.nodes=4", "slurm.ranks_per_node=2", "parallel.pp=2", "train.global_batch_size=16"])
    argv = srun_command(cfg, load_site("local"), "tiny", ("slurm.nodes=4",), nodes=2)
    assert argv[:6] == ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2"]
    assert argv[7:] == ["-m", "hpcyuan", "train", "--config", "tiny", "--set", "slurm.nodes=4", "--set", "parallel.dp=2"]


def test_only_the_config_path_and_overrides_are_pickled():
    job = TrainJob("/runs/my.toml", ("train.steps=9",), "/sites/local.toml")
    job._srun = object()  # a slot's live state never travels
    again = pickle.loads(pickle.dumps(job))
    assert vars(again) == {"config": "/runs/my.toml", "sets": ("train.steps=9",), "site": "/sites/local.toml",
                           "_srun": None}
    nxt = job.checkpoint()
    assert isinstance(nxt, submitit.helpers.DelayedSubmission) and repr(nxt.function) == repr(job)
    assert not nxt.args and not nxt.kwargs


# ---------------------------------------------------------------------------------------------
# TrainJob's exit-code mapping, with stub srun and scontrol on PATH

STUB_SRUN = "#!/bin/bash\necho \"srun $*\" >> \"$STUB_DIR/calls\"\nexit ${FAKE_RC:-0}\n"
STUB_SCONTROL = "#!/bin/bash\necho 'JobId=42 PreemptTime=None EndTime=Unknown'\n"


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:/usr/bin:/bin")
    monkeypatch.setenv("STUB_DIR", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    previous = signal.getsignal(signal.SIGUSR2)
    yield tmp_path, monkeypatch
    signal.signal(signal.SIGUSR2, previous)


def run_job(stubbed, rc: int, restarts: int = 0):
    tmp_path, monkeypatch = stubbed
    monkeypatch.setenv("FAKE_RC", str(rc))
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    return TrainJob("tiny", ("slurm.nodes=4", "slurm.max_requeues=2"), "local")()


def test_done_returns_the_summary_and_uses_the_nodes_the_layout_fits(stubbed, capsys):
    assert run_job(stubbed, 0) == {"run_dir": "runs/tiny", "restarts": 0, "nodes": 2}
    out = capsys.readouterr().out
    assert "granted 3 nodes; using 2" in out and "training finished (exit 0)" in out, out
    cleanup, ranks = (stubbed[0] / "calls").read_text().splitlines()
    assert cleanup.startswith("srun --mpi=none --nodes=2") and "/dev/shm/mpich_shm_" in cleanup, cleanup
    assert ranks.startswith("srun --mpi=pmi2 --kill-on-bad-exit=1 --nodes=2 --ntasks=2"), ranks


@pytest.mark.parametrize("rc, restarts, says", [
    (2, 0, "configuration or input error (exit 2): not retried"),
    (75, 2, "giving up"),
    (137, 2, "giving up"),
    (75, 0, "cannot requeue: not running as a submitit job"),
])
def test_failures_that_are_not_requeued(stubbed, rc, restarts, says):
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    one_line_error(lambda: run_job(stubbed, rc, restarts), says)


@pytest.mark.parametrize("rc, says", [(75, "stopped after a checkpoint (exit 75, signalled (time left unknown))"),
                                      (137, "failure (exit 137")])
def test_requeue_goes_through_the_handler_submitit_installed(stubbed, capsys, rc, says):
    calls = []

    def submitit_handler(signum, frame):  # stands in for SignalHandler.checkpoint_and_try_requeue
        calls.append(signum)
        raise SystemExit(-1)

    signal.signal(signal.SIGUSR2, submitit_handler)
    with pytest.raises(SystemExit):
        run_job(stubbed, rc, restarts=1)
    assert calls == [signal.SIGUSR2]
    out = capsys.readouterr().out
    assert says in out and "requeueing (requeue 2 of at most 2)" in out, out
