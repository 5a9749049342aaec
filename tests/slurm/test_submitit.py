"""`hpcyuan submit --executor submitit` end to end on the local Slurm cluster: the workflows of
test_workflows.py (preemption, a time-limit chain, a resize from 4 to 2 nodes, a killed rank), with
submitit submitting the job and requeueing it through its own checkpoint() path.

What only this executor must show: submitit's requeue ran ("Calling checkpoint method", "Requeued
job"), the pickle it wrote for the next slot holds the config path and --set values only (the resume
point is the run's HDF5 checkpoints), and job.result() of the finished job is TrainJob's summary.
"""

from __future__ import annotations

import submitit

from hpcyuan.scheduler.executor import TrainJob
from test_workflows import killed_rank_run, preempted_run, resized_run, time_limit_chain


def submitit_job(tmp_path, name: str) -> submitit.SlurmJob:
    folder = tmp_path / name / "submitit"
    (pickle,) = folder.glob("*_submitted.pkl")
    return submitit.SlurmJob(folder=folder, job_id=pickle.name.split("_")[0])


def test_preempted_job_is_requeued_by_submitit_and_ends_bit_identical(slurm, tmp_path, reference, cleanup):
    text = preempted_run(slurm, tmp_path, reference, cleanup, "submitit")
    assert "exit 75, preempted at" in text, text[-3000:]  # told apart by Slurm's PreemptTime
    assert "Calling checkpoint method" in text and "Requeued job" in text, text[-3000:]
    job = submitit_job(tmp_path, "preempt")
    # the submission checkpoint() returned for the second slot: strings only, no training state
    delayed = submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle)
    assert isinstance(delayed.function, TrainJob) and not delayed.args and not delayed.kwargs
    assert set(delayed.function.__getstate__()) == {"config", "sets", "site"}
    assert job.paths.submitted_pickle.stat().st_size < 4096
    assert job.result() == {"run_dir": str(tmp_path / "preempt"), "restarts": 1, "nodes": 4}


def test_time_limit_chain_through_submitit(slurm, tmp_path, shakespeare_512, cleanup):
    text = time_limit_chain(slurm, tmp_path, cleanup, "submitit")
    assert "this job is timed-out" in text and "Requeued job" in text, text[-3000:]


def test_preempted_on_four_nodes_resumes_on_two_through_submitit(slurm, tmp_path, reference, cleanup):
    resized_run(slurm, tmp_path, reference, cleanup, "submitit")
    assert submitit_job(tmp_path, "elastic").result()["nodes"] == 2


def test_killed_rank_is_retried_by_submitit_from_the_last_checkpoint(slurm, tmp_path, reference, cleanup):
    out = killed_rank_run(slurm, tmp_path, reference, cleanup, "submitit")
    assert "[hpcyuan-submitit" in out, out  # TrainJob, not a batch script, saw the failure and requeued
