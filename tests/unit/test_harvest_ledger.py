"""The harvest ledger (hpcyuan/scheduler/ledger.py) and the report (hpcyuan/report.py) on a run
directory written the way `hpcyuan train` writes it: three slots (preempted after a save, preempted
with one step lost, completed), reconciled with sacct records."""

import json
from pathlib import Path

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.report import summarize, write_html, write_pictures
from hpcyuan.scheduler.ledger import Ledger, attempt_work, how_it_ended
from hpcyuan.scheduler.slurm_output import SacctRecord

T0 = 1_800_000_000.0


def write_run(run_dir: Path) -> None:
    """Job 11: steps 1-4, stopped and saved at 4. Job 12: steps 5-8, the last save was 7 (a rank died
    after logging 8). Job 13: steps 8-10, done. Every step 2 s; start-up 5 s before the first step."""
    attempts, metrics = [], []
    for job, start, first, last, saved, outcome in [("11", T0 + 10, 1, 4, 4, "stopped by SIGUSR2"),
                                                    ("12", T0 + 40, 5, 8, None, None),
                                                    ("13", T0 + 80, 8, 10, 10, "done")]:
        attempts.append({"event": "start", "time": start + 3, "job_id": job, "restart": 0, "nodes": 2,
                         "layout": "pp1xdp2", "step": first - 1})
        for i, step in enumerate(range(first, last + 1)):
            metrics.append({"kind": "train", "step": step, "loss": 10.0 - step / 2, "elapsed_s": 5.0 + 2 * i})
        if outcome:
            attempts.append({"event": "end", "time": start + 3 + 2 * (last - first + 1) + 1, "step": saved,
                             "outcome": outcome})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in attempts))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


SACCT = [SacctRecord("11", "h", "low", "FAILED", "75:0", 2, ("node1", "node2"), T0 + 10, T0 + 22, 12),
         SacctRecord("12", "h", "low", "FAILED", "1:0", 2, ("node1", "node2"), T0 + 40, T0 + 52, 12),
         SacctRecord("13", "h", "normal", "COMPLETED", "0:0", 2, ("node3", "node4"), T0 + 80, T0 + 92, 12),
         SacctRecord("99", "other", "low", "COMPLETED", "0:0", 4, (), T0, T0 + 5, 5)]


def test_attempt_work_splits_steps_into_kept_and_lost(tmp_path):
    write_run(tmp_path)
    work = attempt_work(tmp_path)
    assert [(w.job_id, w.from_step, w.last_step, w.saved_step) for w in work] == [
        ("11", 0, 4, 4), ("12", 4, 8, 7), ("13", 7, 10, 10)]
    assert work[0].step_times == {1: 2.0, 2: 2.0, 3: 2.0, 4: 2.0}
    assert work[0].first_step_time == T0 + 13 + 2


def test_ledger_reconciles_with_sacct(tmp_path):
    write_run(tmp_path)
    ledger = Ledger(tmp_path / "harvest.sqlite")
    for job, part, price in [("11", "low", 1.0), ("12", "low", 1.0), ("13", "normal", 3.0)]:
        ledger.submitted(job, part, price, T0)
    ledger.reconcile(SACCT, attempt_work(tmp_path), {"11": "preempted", "12": "preempted"})
    slots = ledger.slots()
    assert [(s.job_id, s.partition, s.nodes, s.ended) for s in slots] == [
        ("11", "low", 2, "preempted"), ("12", "low", 2, "preempted"), ("13", "normal", 2, "completed")]
    assert [(s.steps_kept, s.steps_lost) for s in slots] == [(4, 0), (3, 1), (3, 0)]
    assert slots[0].load_s == pytest.approx(5.0) and slots[0].save_s == pytest.approx(1.0)
    assert slots[2].node_hours == pytest.approx(2 * 12 / 3600) and slots[2].cost == pytest.approx(3 * 2 * 12 / 3600)
    ledger.close()
    again = Ledger(tmp_path / "harvest.sqlite")  # a restarted harvester reads the same rows
    assert again.slots() == slots and again.job_ids() == ["11", "12", "13"]
    again.db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    again.db.commit()
    again.close()
    with pytest.raises(HpcyuanError, match="schema version 9"):
        Ledger(tmp_path / "harvest.sqlite")


@pytest.mark.parametrize("state, code, reason, ended", [
    ("FAILED", "75:0", "preempted", "preempted"), ("PREEMPTED", "0:15", "", "preempted"),
    ("FAILED", "75:0", "timed-out", "timeout"), ("TIMEOUT", "0:0", "", "timeout"),
    ("COMPLETED", "0:0", "", "completed"), ("FAILED", "1:0", "", "failed"), ("CANCELLED", "0:0", "", "cancelled"),
    ("RUNNING", "0:0", "", "running"), ("PENDING", "0:0", "", "pending")])
def test_how_it_ended(state, code, reason, ended):
    assert how_it_ended(state, code, reason) == ended


def test_report_numbers_and_pictures(tmp_path):
    write_run(tmp_path)
    ledger = Ledger(tmp_path / "harvest.sqlite")
    for job in ("11", "12", "13"):
        ledger.submitted(job, "low", 1.0, T0)
    ledger.reconcile(SACCT, attempt_work(tmp_path), {"11": "preempted", "12": "preempted"})
    summary = summarize(ledger.slots(), tokens_per_step=1000)
    # kept: 10 steps x 2 s x 2 nodes = 40 node-s of 3 x 12 s x 2 nodes = 72 allocated
    assert summary.goodput == pytest.approx(40 / 72)
    assert (summary.preemptions, summary.steps_lost, summary.lost_per_preemption) == (2, 1, 0.5)
    assert summary.tokens == 10_000
    assert summary.latencies_s == pytest.approx((40 + 5 - 22, 80 + 5 - 52))
    assert "goodput: 55.6%" in summary.text()
    pngs = write_pictures(ledger.slots(), attempt_work(tmp_path), tmp_path / "report")
    assert [p.name for p in pngs] == ["timeline.png", "loss.png", "goodput.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    page = write_html(summary, ledger.slots(), pngs, tmp_path / "report" / "report.html", "t")
    assert page.read_text().count("data:image/png;base64,") == 3
