"""Parsers of Slurm output (hpcyuan/scheduler/slurm_output.py) against real output of the local
cluster, captured into tests/unit/golden/slurm/ (how: the file names say what state the cluster was in;
the commands are the ones harvest.Probe runs, formats from slurm_output)."""

from pathlib import Path

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.slurm_output import parse_sacct, parse_sinfo, parse_squeue, parse_test_only, parse_time

GOLDEN = Path(__file__).parent / "golden" / "slurm"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def test_sinfo_all_idle():
    parts = parse_sinfo(golden("sinfo_idle.txt"))
    assert set(parts) == {"normal", "low"}
    assert parts["low"].up and parts["low"].nodes == ("node1", "node2", "node3", "node4")
    assert parts["low"].idle == parts["low"].nodes


def test_sinfo_busy_counts_only_idle_nodes():
    parts = parse_sinfo(golden("sinfo_busy.txt"))
    # a 3-node exclusive job in normal and a 1-node one in low: the nodes are busy in both partitions
    assert parts["normal"].idle == parts["low"].idle == (), parts
    assert len(parts["normal"].nodes) == 4


def test_sinfo_down_partition():
    parts = parse_sinfo(golden("sinfo_low_down.txt"))
    assert not parts["low"].up and parts["low"].available == "down"
    assert parts["normal"].up


def test_squeue_running_and_pending():
    jobs = parse_squeue(golden("squeue_busy.txt"))
    by_name = {j.name: j for j in jobs}
    high = by_name["bg-high"]
    assert (high.state, high.partition, high.nodes, len(high.node_list)) == ("RUNNING", "normal", 3, 3)
    assert high.start is not None and high.end is not None and high.end > high.start
    assert by_name["bg-wait"].state == "PENDING" and by_name["bg-wait"].node_list == ()
    assert all(j.active for j in jobs)


def test_test_only_accepted_now_and_later():
    now = parse_test_only("low", golden("testonly_low_idle.txt"), 0)
    assert now.accepted and now.partition == "low" and now.nodes == ("node1", "node2") and now.processors == 4
    assert now.start == parse_time("2026-11-23T17:50:39")
    later = parse_test_only("low", golden("testonly_low_busy.txt"), 0)
    assert later.accepted and later.start > now.start


def test_test_only_answers_even_for_a_down_partition():
    # Slurm 22.05 plans a job into a DOWN partition as if it were up: why the probe asks sinfo first
    answer = parse_test_only("low", golden("testonly_low_down.txt"), 0)
    assert answer.accepted and answer.nodes == ("node4",)


@pytest.mark.parametrize("name", ["testonly_no_partition.txt", "testonly_too_many_nodes.txt"])
def test_test_only_refused(name):
    answer = parse_test_only("low", golden(name), 1)
    assert not answer.accepted and answer.error and "\n" not in answer.error, answer


def test_sacct_records():
    recs = parse_sacct(golden("sacct_cancelled.txt"))
    assert [(r.job_id, r.state, r.partition, r.nodes) for r in recs] == [
        ("25", "CANCELLED", "normal", 3), ("26", "CANCELLED", "low", 1), ("27", "CANCELLED", "normal", 4)]
    assert recs[0].node_list == ("node1", "node2", "node3") and recs[2].node_list == ()  # "None assigned"
    assert recs[0].start is not None and recs[0].end is None  # End "Unknown": sacct lags the cancel by ~1 s
    assert parse_sacct("") == []


def test_bad_lines_name_the_line():
    with pytest.raises(HpcyuanError, match="unexpected sinfo line"):
        parse_sinfo("normal|up|4\n")
    with pytest.raises(HpcyuanError, match="unexpected Slurm time"):
        parse_time("yesterday")
    assert parse_time("Unknown") is None
