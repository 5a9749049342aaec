"""The batch script `hpcyuan submit` renders (hpcyuan/scheduler, slurm/train.sbatch): a golden file,
hostile values staying inert, and the exit-code mapping, run by bash with stub srun/scontrol/squeue.

Regenerate the golden file after an intended change: HPCYUAN_UPDATE_GOLDEN=1 pytest tests/unit/test_sbatch.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from hpcyuan.cli import main
from hpcyuan.config import load_config
from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler import load_site, render_script, site_from_dict

GOLDEN = Path(__file__).parent / "golden" / "train.sbatch"
SITE = site_from_dict({
    "name": "golden", "partition": "batch", "account": "proj123", "qos": "normal", "exclusive": True,
    "modules": ["gcc/12", "python/3.11"], "mpi": "pmi2", "srun_flags": ["--kill-on-bad-exit=1"],
    "sbatch_flags": ["--gres=gpu:4"], "env": {"OMP_NUM_THREADS": "8"}}, "golden.toml")
HOSTILE = [
    "x; rm -rf / #",
    "$(touch {pwned})",
    "`touch {pwned}`",
    "a'b\"c; touch {pwned}",
    "' ; touch {pwned} ; '",
    "${{IFS}}touch${{IFS}}{pwned}",
]


def render(sets=(), site=SITE, **kw) -> str:
    kw.setdefault("python", "/opt/hpcyuan/venv/bin/python")
    kw.setdefault("workdir", "/srv/hpcyuan")
    return render_script(load_config("tiny", list(sets)), site, "tiny", list(sets), **kw)


GOLDEN_SETS = ["slurm.partition=low", "slurm.nodes=4", 'slurm.time="02:00:00"', 'slurm.time_min="00:30:00"',
               "slurm.signal_seconds=90", "slurm.max_requeues=5", "slurm.min_nodes=2", "train.run_dir=runs/golden"]


def test_golden_file():
    text = render(GOLDEN_SETS, job_name="golden-run")
    if os.environ.get("HPCYUAN_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "rendered script differs from tests/unit/golden/train.sbatch"


def test_directives():
    text = render(GOLDEN_SETS, job_name="golden-run")
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    for expected in ("--requeue", "--signal=B:USR2@90", "--open-mode=append", "--time-min=00:30:00", "--nodes=2-4",
                     "--job-name=golden-run", "--partition=low", "--account=proj123", "--time=02:00:00",
                     "--output=runs/golden/slurm-%j.out", "--exclusive", "--gres=gpu:4"):
        assert expected in directives, (expected, directives)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_local_site_profile_and_defaults():
    site = load_site("local")
    assert site.partition == "normal" and site.mpi == "pmi2" and site.exclusive
    text = render(site=site)
    assert "#SBATCH --partition=normal" in text and "#SBATCH --nodes=1\n" in text
    assert "# (no --time-min)" in text and "#SBATCH --job-name=hpcyuan-tiny" in text
    assert load_site("example").account == "proj123"
    with pytest.raises(HpcyuanError, match="not found"):
        load_site("no-such-site")
    with pytest.raises(HpcyuanError, match="unknown site field"):
        site_from_dict({"partitoin": "x"})


def test_node_range_must_fit_the_layout():
    with pytest.raises(HpcyuanError, match="dp = 3"):
        render(["slurm.nodes=3"])
    with pytest.raises(HpcyuanError, match="slurm.min_nodes = 3: must be between 1 and slurm.nodes"):
        render(["slurm.nodes=2", "slurm.min_nodes=3"])
    with pytest.raises(HpcyuanError, match="3 nodes"):
        render(["slurm.nodes=4", "slurm.min_nodes=3"])  # the low end must fit the layout too
    assert "#SBATCH --nodes=1-4" in render(["slurm.nodes=4", "slurm.min_nodes=1"])  # 3 in between: the script uses 2
    assert "#SBATCH --nodes=4\n" in render(["slurm.nodes=4", "slurm.min_nodes=4"])


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_line_breaks_are_refused(bad):
    with pytest.raises(HpcyuanError, match="line break"):
        render(job_name=bad)
    with pytest.raises(HpcyuanError, match="line break"):
        render([f"train.run_dir=runs/{bad}"])


# ---------------------------------------------------------------------------------------------
# running the rendered script in bash with stub Slurm commands

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$STUB_DIR/calls"
"""
SRUN = """#!/bin/bash
if [ "$1" = --mpi=none ] && [ -n "${SIGNAL_CLEANUP:-}" ]; then kill -USR2 $PPID; fi  # Slurm's signal, early
for a in "$@"; do printf '%s\\0' "$a"; done > "$STUB_DIR/srun.argv"
echo "srun $*" >> "$STUB_DIR/calls"
exit ${FAKE_RC:-0}
"""


def run_script(tmp_path: Path, text: str, rc: int = 0, restarts: int = 0, nodes: int = 1, args: tuple[str, ...] = (),
               **env_extra: str) -> tuple[int, str, list[str]]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", STUB), ("squeue", STUB), ("scancel", STUB)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    (tmp_path / "calls").unlink(missing_ok=True)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_DIR": str(tmp_path), "FAKE_RC": str(rc),
           "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": str(restarts), "SLURM_JOB_NUM_NODES": str(nodes),
           "SLURM_JOB_NODELIST": "node[1-4]", **env_extra}
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    r = subprocess.run(["bash", str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return r.returncode, r.stdout + r.stderr, calls


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_stay_inert(tmp_path, hostile):
    pwned = tmp_path / "PWNED"
    value = hostile.format(pwned=pwned)
    sets = [f"train.run_dir=runs/{value}", f"name={value}", "slurm.nodes=2"]
    text = render(sets, job_name=value, workdir=str(tmp_path))
    # every #SBATCH line reads back (shell-like quoting, as sbatch parses it) to the one value given
    lines = {line.split("=", 1)[0]: line for line in text.splitlines() if line.startswith("#SBATCH --")}
    assert shlex.split(lines["#SBATCH --job-name"])[1] == f"--job-name={value}"
    assert shlex.split(lines["#SBATCH --output"])[1] == f"--output=runs/{value}/slurm-%j.out"
    rc, out, calls = run_script(tmp_path, text, nodes=2)
    assert rc == 0, out
    assert not pwned.exists(), out
    argv = (tmp_path / "srun.argv").read_bytes().split(b"\0")[:-1]
    argv = [a.decode() for a in argv]
    start = argv.index("train")
    assert argv[start:] == ["train", "--config", "tiny", "--set", f"train.run_dir=runs/{value}", "--set",
                            f"name={value}", "--set", "slurm.nodes=2", "--set", "parallel.dp=2"], argv
    assert argv[:start] == ["--mpi=pmi2", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                            "/opt/hpcyuan/venv/bin/python", "-m", "hpcyuan"], argv


@pytest.mark.parametrize("rc, restarts, exit_code, requeued, says", [
    (0, 0, 0, False, "training finished"),
    (75, 0, 0, True, "stopped after a checkpoint"),
    (75, 5, 75, False, "giving up"),
    (2, 0, 2, False, "not retried"),
    (1, 0, 0, True, "failure (exit 1"),
    (137, 2, 0, True, "failure (exit 137"),
    (3, 5, 3, False, "giving up"),
])
def test_exit_code_mapping(tmp_path, rc, restarts, exit_code, requeued, says):
    text = render(["slurm.max_requeues=5"])
    code, out, calls = run_script(tmp_path, text, rc=rc, restarts=restarts)
    assert code == exit_code, out
    assert ("scontrol requeue 42" in calls) == requeued, calls
    assert says in out, out


def test_granted_nodes_the_layout_cannot_use_are_left_idle(tmp_path):
    # -N 1-4 granted 3: dp must divide batch 8 / micro 2, so the script runs 2 nodes x 1 rank, dp 2
    code, out, calls = run_script(tmp_path, render(["slurm.nodes=4", "slurm.min_nodes=1"]), nodes=3)
    assert code == 0 and "using 2" in out, out
    assert any("--nodes=2 --ntasks=2" in c and "parallel.dp=2" in c for c in calls), calls


def test_submit_dry_run_prints_the_script(capsys):
    assert main(["submit", "--config", "tiny", "--site", "local", "--dry-run", "--set", "slurm.nodes=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "#SBATCH --nodes=2\n" in out and "--mpi=pmi2" in out


def test_stale_mpich_segments_of_the_training_step_are_removed_first(tmp_path):
    # job 42, training step 42.1 (the cleanup is 42.0): the names MPICH gives its segments (FNV-1a)
    from hpcyuan.scheduler.executor import mpich_world_id, stale_segments_command

    assert mpich_world_id("47.0") == "37444e92"  # seen in /dev/shm after the failure docs/slurm.md describes
    code, out, calls = run_script(tmp_path, render(["slurm.nodes=2"]), nodes=2)
    assert code == 0, out
    assert calls[0] == " ".join(stale_segments_command("42", 2)), calls
    assert calls[1].startswith("srun --mpi=pmi2"), calls


def test_a_signal_during_that_step_requeues_without_starting_the_ranks(tmp_path):
    code, out, calls = run_script(tmp_path, render(["slurm.nodes=2"]), nodes=2, SIGNAL_CLEANUP="1")
    assert code == 0 and "stopped before the ranks started" in out, out
    assert "scontrol requeue 42" in calls and not any(c.startswith("srun --mpi=pmi2") for c in calls), calls


# ---------------------------------------------------------------------------------------------
# sites that forbid requeue: the run continues in the next job of a chain submitted up front

CHAIN_SETS = ["slurm.max_requeues=3", "train.run_dir=runs/chain"]


def chain_site(resume: str):
    return site_from_dict({"name": f"no-requeue-{resume}", "resume": resume}, f"{resume}.toml")


def test_chain_directives():
    directives = lambda text: [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]  # noqa: E731
    single, array = (directives(render(CHAIN_SETS, site=chain_site(r))) for r in ("singleton", "array"))
    assert "--no-requeue" in single and "--requeue" not in single and "--output=runs/chain/slurm-%j.out" in single
    assert any(d.startswith("--dependency=singleton") for d in single), single
    # one task at a time, max_requeues + 1 slots, one log for all of them (%A: the array's id)
    assert "--no-requeue" in array and "--array=0-3%1" in array and "--output=runs/chain/slurm-%A.out" in array
    assert "--requeue" in directives(render(CHAIN_SETS))
    with pytest.raises(HpcyuanError, match="resume = 'sometimes': must be one of requeue, singleton, array"):
        chain_site("sometimes")


@pytest.mark.parametrize("resume, args, env", [("singleton", ("1",), {}),
                                               ("array", (), {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "40"})])
@pytest.mark.parametrize("rc, exit_code, handed_over, cancels, says", [
    (75, 0, True, False, "the next job of the chain resumes (requeue 2 of at most 3)"),
    (1, 0, True, False, "failure (exit 1"),
    (0, 0, False, True, "training finished"),
    (2, 2, False, True, "not retried"),
])
def test_chain_exit_code_mapping(tmp_path, resume, args, env, rc, exit_code, handed_over, cancels, says):
    text = render(CHAIN_SETS, site=chain_site(resume))
    code, out, calls = run_script(tmp_path, text, rc=rc, args=args, SLURM_JOB_NAME="my-run", SLURM_JOB_USER="ann",
                                  **env)
    assert code == exit_code, out
    assert "restart 1]" in out, out  # the slot's index in the chain, from its argument or array task id
    assert not any(c.startswith("scontrol requeue") for c in calls), calls  # never requeued: the site forbids it
    assert ("requeueing: the next job" in out) == handed_over, out
    cancel = {"singleton": "scancel --state=PENDING --user=ann --name=my-run", "array": "scancel --state=PENDING 40"}
    assert (cancel[resume] in calls) == cancels, calls
    assert says in out, out


def test_the_last_slot_of_a_chain_gives_up_and_cancels_nothing_left_to_run(tmp_path):
    text = render(CHAIN_SETS, site=chain_site("singleton"))
    code, out, calls = run_script(tmp_path, text, rc=75, args=("3",), SLURM_JOB_NAME="my-run", SLURM_JOB_USER="ann")
    assert code == 75 and "giving up" in out, out
    assert "scancel --state=PENDING --user=ann --name=my-run" in calls, calls


def test_submitit_refuses_a_site_that_forbids_requeue(tmp_path, capsys):
    site = tmp_path / "norequeue.toml"
    site.write_text('name = "norequeue"\nresume = "singleton"\n')
    assert main(["submit", "--config", "tiny", "--site", str(site), "--executor", "submitit", "--dry-run"]) == 2
    assert "submitit resumes by requeueing the job; use --executor sbatch" in capsys.readouterr().err
